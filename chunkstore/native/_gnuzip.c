/* chunkstore.native._gnuzip: streaming raw-deflate encoders that write what GNU gzip 1.12 and
 * pigz 2.6 write between the gzip header and trailer. The engines are in gnuzip/ (gnudeflate.c,
 * pigz.c); this file is the Python face: two types with compress()/finish(), the GIL released
 * while they work. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <zlib.h>

#include "gnuzip/common.h"

typedef enum { KIND_GZIP, KIND_PIGZ } kind_t;

typedef struct {
    PyObject_HEAD
    kind_t kind;
    void *state; /* gd_state or pz_state; NULL once finished */
    int busy;    /* a call is running with the GIL released */
} Encoder;

static int feed(Encoder *e, const uint8_t *data, size_t len, int final) {
    return e->kind == KIND_GZIP ? gd_feed(e->state, data, len, final)
                                : pz_feed(e->state, data, len, final);
}

static gz_out *output_of(Encoder *e) {
    return e->kind == KIND_GZIP ? gd_output(e->state) : pz_output(e->state);
}

static void destroy_state(Encoder *e) {
    if (e->state == NULL)
        return;
    if (e->kind == KIND_GZIP)
        gd_destroy(e->state);
    else
        pz_destroy(e->state);
    e->state = NULL;
}

/* Run the engine over `data` (GIL released), then hand back the bytes it produced. */
static PyObject *run(Encoder *e, const uint8_t *data, size_t len, int final) {
    if (e->state == NULL) {
        PyErr_SetString(PyExc_ValueError, "encoder already finished");
        return NULL;
    }
    if (e->busy) {
        PyErr_SetString(PyExc_RuntimeError, "encoder is in use by another thread");
        return NULL;
    }
    e->busy = 1;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = feed(e, data, len, final);
    Py_END_ALLOW_THREADS
    e->busy = 0;
    if (rc != 0) {
        destroy_state(e);
        return PyErr_NoMemory();
    }
    gz_out *out = output_of(e);
    PyObject *result = PyBytes_FromStringAndSize((const char *)out->data, (Py_ssize_t)out->len);
    if (result == NULL)
        return NULL;
    out->len = 0;
    if (out->cap > (1u << 20)) {
        /* do not keep a large buffer between calls */
        free(out->data);
        out->data = NULL;
        out->cap = 0;
    }
    if (final)
        destroy_state(e);
    return result;
}

static PyObject *Encoder_compress(Encoder *e, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) != 0)
        return NULL;
    PyObject *r = run(e, view.buf, (size_t)view.len, 0);
    PyBuffer_Release(&view);
    return r;
}

static PyObject *Encoder_finish(Encoder *e, PyObject *Py_UNUSED(ignored)) {
    return run(e, NULL, 0, 1);
}

static void Encoder_dealloc(Encoder *e) {
    destroy_state(e);
    Py_TYPE(e)->tp_free((PyObject *)e);
}

static PyMethodDef Encoder_methods[] = {
    {"compress", (PyCFunction)Encoder_compress, METH_O,
     "compress(data) -> bytes: consume data, return the output that is final so far."},
    {"finish", (PyCFunction)Encoder_finish, METH_NOARGS,
     "finish() -> bytes: end the stream, return the rest; the encoder cannot be used after."},
    {NULL, NULL, 0, NULL},
};

static int check_level(int level) {
    if (level < 1 || level > 9) {
        PyErr_Format(PyExc_ValueError, "level must be 1..9, not %d", level);
        return -1;
    }
    return 0;
}

static PyObject *GzipEncoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"level", "rsyncable", NULL};
    int level = 6, rsyncable = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i$p:GzipEncoder", kwlist, &level, &rsyncable))
        return NULL;
    if (check_level(level) != 0)
        return NULL;
    Encoder *e = (Encoder *)type->tp_alloc(type, 0);
    if (e == NULL)
        return NULL;
    e->kind = KIND_GZIP;
    e->state = gd_create(level, rsyncable);
    if (e->state == NULL) {
        Py_DECREF(e);
        return PyErr_NoMemory();
    }
    return (PyObject *)e;
}

static PyObject *PigzEncoder_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"level",  "block_size", "independent", "serial",
                             "rsyncable", "threads",   NULL};
    int level = 6, independent = 0, serial = 0, rsyncable = 0, threads = 1;
    Py_ssize_t block_size = 131072;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|in$pppi:PigzEncoder", kwlist, &level,
                                     &block_size, &independent, &serial, &rsyncable, &threads))
        return NULL;
    if (check_level(level) != 0)
        return NULL;
    if (block_size < 32768 || block_size > (1 << 29) || block_size % 1024 != 0) {
        PyErr_Format(PyExc_ValueError,
                     "block_size must be a multiple of 1024 in 32 KiB..512 MiB, not %zd",
                     block_size);
        return NULL;
    }
    if (threads < 1 || threads > 64) {
        PyErr_Format(PyExc_ValueError, "threads must be 1..64, not %d", threads);
        return NULL;
    }
    Encoder *e = (Encoder *)type->tp_alloc(type, 0);
    if (e == NULL)
        return NULL;
    e->kind = KIND_PIGZ;
    e->state = pz_create(level, (size_t)block_size, independent, serial, rsyncable, threads);
    if (e->state == NULL) {
        Py_DECREF(e);
        return PyErr_NoMemory();
    }
    return (PyObject *)e;
}

static PyTypeObject GzipEncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "chunkstore.native._gnuzip.GzipEncoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "GzipEncoder(level=6, *, rsyncable=False): GNU gzip 1.12's raw deflate stream.",
    .tp_new = GzipEncoder_new,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
};

static PyTypeObject PigzEncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "chunkstore.native._gnuzip.PigzEncoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PigzEncoder(level=6, block_size=131072, *, independent=False, serial=False, "
              "rsyncable=False, threads=1): pigz 2.6's raw deflate stream over the system zlib.",
    .tp_new = PigzEncoder_new,
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_methods = Encoder_methods,
};

static PyObject *zlib_runtime_version(PyObject *Py_UNUSED(m), PyObject *Py_UNUSED(a)) {
    return PyUnicode_FromString(zlibVersion());
}

static PyMethodDef module_methods[] = {
    {"zlib_version", zlib_runtime_version, METH_NOARGS,
     "zlib_version() -> str: the version of the zlib the pigz encoder runs on."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "chunkstore.native._gnuzip",
    .m_doc = "Raw deflate encoders byte-identical to GNU gzip 1.12 and pigz 2.6.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__gnuzip(void) {
    if (PyType_Ready(&GzipEncoderType) < 0 || PyType_Ready(&PigzEncoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "GzipEncoder", (PyObject *)&GzipEncoderType) < 0 ||
        PyModule_AddObjectRef(m, "PigzEncoder", (PyObject *)&PigzEncoderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
