/* chunkstore.native._goflate: Go's compress/flate encoder (go1.7 .. go1.26) as a streaming
 * raw-deflate compressor whose output is byte-identical to Go's at every level.
 *
 *     d = Deflater(level)        # -2 HuffmanOnly, -1 default (6), 0 stored, 1 .. 9
 *     out = d.compress(data) + d.finish()
 *
 * The encoder itself lives in goflate/ (plain C, no Python); this file is the binding. The GIL is
 * released while compressing; one Deflater must not be used from two threads at once (that is
 * detected and refused).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "goflate/goflate.h"

typedef struct {
    PyObject_HEAD
    gf_state *state;
    int level; /* as given */
    int busy;
} DeflaterObject;

/* keep memory bounded between calls: drop an output buffer that grew large */
#define KEEP_OUTPUT_BUFFER (1u << 20)

static PyObject *take_output(DeflaterObject *self)
{
    gf_bits *b = &self->state->out;
    PyObject *res = PyBytes_FromStringAndSize((const char *)b->buf, (Py_ssize_t)b->len);
    b->len = 0;
    if (b->cap > KEEP_OUTPUT_BUFFER) {
        free(b->buf);
        b->buf = NULL;
        b->cap = 0;
    }
    return res;
}

static int check_usable(DeflaterObject *self)
{
    if (self->state == NULL) {
        PyErr_SetString(PyExc_ValueError, "Deflater is not initialized");
        return -1;
    }
    if (self->state->finished) {
        PyErr_SetString(PyExc_ValueError, "Deflater used after finish()");
        return -1;
    }
    if (self->state->out.failed) {
        PyErr_SetString(PyExc_MemoryError, "Deflater ran out of memory earlier");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Deflater is in use by another thread");
        return -1;
    }
    return 0;
}

static int Deflater_init(DeflaterObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"level", NULL};
    int level = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|i:Deflater", kwlist, &level))
        return -1;
    if (!gf_level_valid(level)) {
        PyErr_Format(PyExc_ValueError, "invalid Go flate level %d: want -2..9", level);
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Deflater is in use by another thread");
        return -1;
    }
    gf_state *st = gf_new(level);
    if (st == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    gf_free(self->state);
    self->state = st;
    self->level = level;
    return 0;
}

static void Deflater_dealloc(DeflaterObject *self)
{
    gf_free(self->state);
    self->state = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Deflater_compress(DeflaterObject *self, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (check_usable(self) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int rc;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = gf_write(self->state, (const uint8_t *)view.buf, (size_t)view.len);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    PyBuffer_Release(&view);
    if (rc < 0)
        return PyErr_NoMemory();
    return take_output(self);
}

static PyObject *Deflater_finish(DeflaterObject *self, PyObject *Py_UNUSED(ignored))
{
    if (check_usable(self) < 0)
        return NULL;
    int rc;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    rc = gf_finish(self->state);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (rc < 0)
        return PyErr_NoMemory();
    PyObject *res = take_output(self);
    /* the window and tables are no longer needed */
    free(self->state->window);
    self->state->window = NULL;
    return res;
}

static PyObject *Deflater_get_level(DeflaterObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromLong(self->level);
}

static PyMethodDef Deflater_methods[] = {
    {"compress", (PyCFunction)Deflater_compress, METH_O,
     "compress(data) -> bytes\n\nConsume data (any bytes-like object); return the output that is "
     "final so far."},
    {"finish", (PyCFunction)Deflater_finish, METH_NOARGS,
     "finish() -> bytes\n\nEnd the stream; return the rest of the output. The Deflater cannot be "
     "used after."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Deflater_getset[] = {
    {"level", (getter)Deflater_get_level, NULL, "the level as given", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject DeflaterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "chunkstore.native._goflate.Deflater",
    .tp_basicsize = sizeof(DeflaterObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Deflater(level=-1)\n\nGo compress/flate (go1.7..go1.26) raw deflate encoder; output "
              "is byte-identical to Go's flate.Writer fed the same data and closed.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Deflater_init,
    .tp_dealloc = (destructor)Deflater_dealloc,
    .tp_methods = Deflater_methods,
    .tp_getset = Deflater_getset,
};

static struct PyModuleDef goflate_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "chunkstore.native._goflate",
    .m_doc = "Go's compress/flate encoder (go1.7 .. go1.26), byte-identical output.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__goflate(void)
{
    gf_tables_init();
    if (PyType_Ready(&DeflaterType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&goflate_module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&DeflaterType);
    if (PyModule_AddObject(m, "Deflater", (PyObject *)&DeflaterType) < 0) {
        Py_DECREF(&DeflaterType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
