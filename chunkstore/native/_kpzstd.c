/* chunkstore.native._kpzstd: klauspost compress/zstd 1.15.12 frames, byte for byte, for the exact
 * reproduction of zstd layers written by containers/image (skopeo, podman, buildah:
 * --dest-compress-format zstd). The encoder itself is kpzstd/enc.c.
 *
 * Encoder(level=2, prefix=8): level is klauspost's EncoderLevel (1 = SpeedFastest, 2 =
 * SpeedDefault; better and best are not done); prefix is how many leading bytes the producer writes before handing the rest to
 * ReadFrom (containers/image: the 8 bytes it peeks at to detect compression).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "kpzstd/kz.h"

typedef struct {
    PyObject_HEAD
    kz_enc *enc;
    kz_buf out;
    int level;
    Py_ssize_t prefix;
    int finished;
    PyThread_type_lock lock;
} EncoderObject;

static void lock_obj(PyThread_type_lock lock) {
    if (!PyThread_acquire_lock(lock, 0)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(lock, 1);
        Py_END_ALLOW_THREADS
    }
}

static int Encoder_init(EncoderObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"level", "prefix", NULL};
    int level = KZ_LEVEL_DEFAULT;
    Py_ssize_t prefix = 8;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|in:Encoder", names, &level, &prefix)) return -1;
    if (level != KZ_LEVEL_DEFAULT && level != KZ_LEVEL_FASTEST) {
        PyErr_Format(PyExc_ValueError,
                     "klauspost zstd level must be 1 (SpeedFastest) or 2 (SpeedDefault), not %d",
                     level);
        return -1;
    }
    if (prefix < 1 || prefix > 65536) {
        PyErr_Format(PyExc_ValueError, "prefix must be 1..65536, not %zd", prefix);
        return -1;
    }
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    kz_free(self->enc);
    kz_buf_free(&self->out);
    self->out.oom = 0;
    self->enc = kz_new(level, (size_t)prefix);
    if (!self->enc) {
        PyErr_NoMemory();
        return -1;
    }
    self->level = level;
    self->prefix = prefix;
    self->finished = 0;
    return 0;
}

static void Encoder_dealloc(EncoderObject *self) {
    kz_free(self->enc);
    kz_buf_free(&self->out);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int usable(EncoderObject *self) {
    if (!self->lock) {
        PyErr_SetString(PyExc_ValueError, "Encoder is not initialised");
        return 0;
    }
    return 1;
}

static int live(EncoderObject *self) {
    if (!self->enc) {
        PyErr_SetString(PyExc_ValueError, self->finished ? "Encoder already finished"
                                                         : "Encoder is not initialised");
        return 0;
    }
    return 1;
}

static PyObject *take(EncoderObject *self, int rc) {
    if (rc || self->out.oom) {
        kz_buf_free(&self->out);
        self->out.oom = 0;
        return PyErr_NoMemory();
    }
    PyObject *r = PyBytes_FromStringAndSize((const char *)self->out.p, (Py_ssize_t)self->out.len);
    self->out.len = 0;
    if (self->out.cap > ((size_t)4 << 20)) kz_buf_free(&self->out);
    return r;
}

static PyObject *Encoder_compress(EncoderObject *self, PyObject *arg) {
    if (!usable(self)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = NULL;
    lock_obj(self->lock);
    if (live(self)) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = kz_feed(self->enc, view.buf, (size_t)view.len, &self->out);
        Py_END_ALLOW_THREADS
        result = take(self, rc);
    }
    PyThread_release_lock(self->lock);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *Encoder_finish(EncoderObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!usable(self)) return NULL;
    PyObject *result = NULL;
    lock_obj(self->lock);
    if (live(self)) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = kz_end(self->enc, &self->out);
        Py_END_ALLOW_THREADS
        result = take(self, rc);
        kz_free(self->enc);
        self->enc = NULL;
        kz_buf_free(&self->out);
        self->finished = 1;
    }
    PyThread_release_lock(self->lock);
    return result;
}

static PyObject *Encoder_get_level(EncoderObject *self, void *c) {
    return PyLong_FromLong(self->level);
}
static PyObject *Encoder_get_prefix(EncoderObject *self, void *c) {
    return PyLong_FromSsize_t(self->prefix);
}

static PyMethodDef Encoder_methods[] = {
    {"compress", (PyCFunction)Encoder_compress, METH_O,
     "compress(data) -> bytes: consume data; return the frame bytes completed so far."},
    {"finish", (PyCFunction)Encoder_finish, METH_NOARGS,
     "finish() -> bytes: end the frame (last block, checksum); the object is then spent."},
    {NULL},
};

static PyGetSetDef Encoder_getset[] = {
    {"level", (getter)Encoder_get_level, NULL, "klauspost EncoderLevel", NULL},
    {"prefix", (getter)Encoder_get_prefix, NULL, "bytes written before ReadFrom", NULL},
    {NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "chunkstore.native._kpzstd.Encoder",
    .tp_basicsize = sizeof(EncoderObject),
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Encoder(level=2, prefix=8): a klauspost/compress v1.15.12 zstd frame.",
    .tp_methods = Encoder_methods,
    .tp_getset = Encoder_getset,
    .tp_init = (initproc)Encoder_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef kzmodule = {
    PyModuleDef_HEAD_INIT,
    .m_name = "chunkstore.native._kpzstd",
    .m_doc = "klauspost compress/zstd v1.15.12 frames (containers/image), byte-identical.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__kpzstd(void) {
    kz_enc *warm = kz_new(KZ_LEVEL_DEFAULT, 8); /* builds the shared predefined tables */
    if (!warm) return PyErr_NoMemory();
    kz_free(warm);
    if (PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&kzmodule);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Encoder", (PyObject *)&EncoderType) < 0 ||
        PyModule_AddStringConstant(m, "KLAUSPOST_COMPRESS_VERSION", "1.15.12") < 0 ||
        PyModule_AddIntConstant(m, "LEVEL_DEFAULT", KZ_LEVEL_DEFAULT) < 0 ||
        PyModule_AddIntConstant(m, "LEVEL_FASTEST", KZ_LEVEL_FASTEST) < 0 ||
        PyModule_AddIntConstant(m, "CONTAINERS_IMAGE_PREFIX", 8) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
