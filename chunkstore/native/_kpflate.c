/* chunkstore.native._kpflate: klauspost flate (compress v1.15.12) and pgzip (v1.2.5) deflate
 * streams, byte for byte, for the exact reproduction of gzip layers written by containers/image
 * (skopeo, podman, buildah) and umoci.
 *
 * PgzipDeflater(level, block_size, threads) writes the raw deflate body pgzip puts between its
 * gzip header and trailer: the input is cut into blocks of exactly block_size bytes; each block
 * is compressed by a fresh klauspost flate writer primed with the last 16 KiB of the previous
 * block as dictionary and ends with a sync flush (00 00 ff ff); the last block (the remainder,
 * possibly empty) is also closed (a final empty fixed block, 03 00). Blocks are independent given
 * their dictionary, so a batch of them is compressed on native threads with the GIL released.
 *
 * Deflater(level) is a single klauspost flate stream (flate.NewWriter, Write, Close), as written
 * by klauspost's gzip and zlib packages.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <pthread.h>
#include <unistd.h>

#include "kpflate/kp.h"

#define PGZIP_TAIL 16384 /* dictionary handed from one pgzip block to the next */
#define MAX_THREADS 64
#define MAX_BLOCK (1 << 30)
#define AUTO_BATCH ((size_t)64 << 20) /* automatic thread count buffers at most this */

/* ------------------------------------------------------------------ shared helpers */

static void lock_obj(PyThread_type_lock lock) {
    if (!PyThread_acquire_lock(lock, 0)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(lock, 1);
        Py_END_ALLOW_THREADS
    }
}

static int check_level(int level) {
    if (level < -2 || level > 9) {
        PyErr_Format(PyExc_ValueError, "klauspost flate level must be -2..9, not %d", level);
        return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------ pgzip */

typedef struct {
    const uint8_t *data;
    size_t len;
    const uint8_t *dict;
    size_t dlen;
    int last;
    kp_buf out;
} pg_job;

typedef struct {
    pg_job *jobs;
    int njobs, first, stride;
    kp_stream *s;
} pg_worker;

typedef struct {
    PyObject_HEAD
    int level;
    int threads;
    int finished;
    int ready; /* __init__ completed */
    size_t block;
    kp_stream *streams[MAX_THREADS];
    uint8_t *buf; /* pending input: up to `threads` blocks */
    size_t buf_len, buf_cap;
    uint8_t tail[PGZIP_TAIL];
    size_t tail_len;
    kp_buf acc; /* output of the current call */
    /* threads == 1: blocks are coded as the input comes (their bytes are final as soon as
     * klauspost would write them), with the tail of the current block kept for the next one */
    size_t filled; /* bytes of the current block written to streams[0] */
    uint8_t next_tail[PGZIP_TAIL];
    PyThread_type_lock lock;
} PgzipObject;

static void run_job(kp_stream *s, pg_job *j) {
    kp_stream_reset(s, &j->out, j->dict, j->dlen);
    kp_stream_write(s, j->data, j->len);
    kp_stream_flush(s);
    if (j->last) kp_stream_close(s);
}

static void *worker_main(void *arg) {
    pg_worker *w = arg;
    for (int i = w->first; i < w->njobs; i += w->stride) run_job(w->s, &w->jobs[i]);
    return NULL;
}

/* Compress jobs (GIL released) and append their output to self->acc; -1 when out of memory. */
static int run_jobs(PgzipObject *self, pg_job *jobs, int njobs) {
    int nw = njobs < self->threads ? njobs : self->threads;
    for (int i = 0; i < nw; i++) {
        if (!self->streams[i] && !(self->streams[i] = kp_stream_new(self->level))) return -1;
    }
    pg_worker workers[MAX_THREADS];
    pthread_t tids[MAX_THREADS];
    int started[MAX_THREADS] = {0};
    for (int i = 0; i < nw; i++) {
        workers[i] = (pg_worker){jobs, njobs, i, nw, self->streams[i]};
        if (i > 0) started[i] = pthread_create(&tids[i], NULL, worker_main, &workers[i]) == 0;
    }
    /* the calling thread takes worker 0, and the share of any thread that failed to start */
    worker_main(&workers[0]);
    for (int i = 1; i < nw; i++) {
        if (started[i]) pthread_join(tids[i], NULL);
        else worker_main(&workers[i]);
    }
    int rc = 0;
    for (int i = 0; i < njobs; i++) {
        kp_buf *o = &jobs[i].out;
        if (o->oom || kp_buf_grow(&self->acc, o->len) < 0) rc = -1;
        else {
            memcpy(self->acc.p + self->acc.len, o->p, o->len);
            self->acc.len += o->len;
        }
        kp_buf_free(o);
    }
    return rc;
}

/* Compress `count` whole blocks starting at p (and, if final, one last block of `rest` bytes). */
static int run_blocks(PgzipObject *self, const uint8_t *p, int count, int final, size_t rest) {
    pg_job jobs[MAX_THREADS + 1];
    int n = 0;
    for (int i = 0; i < count + (final ? 1 : 0); i++) {
        pg_job *j = &jobs[n++];
        memset(j, 0, sizeof *j);
        j->data = p + (size_t)i * self->block;
        j->len = i < count ? self->block : rest;
        j->last = i == count;
        if (i == 0) {
            j->dict = self->tail_len ? self->tail : NULL;
            j->dlen = self->tail_len;
        } else {
            j->dict = j->data - PGZIP_TAIL;
            j->dlen = PGZIP_TAIL;
        }
    }
    int rc = run_jobs(self, jobs, n);
    if (count > 0) {
        memcpy(self->tail, p + (size_t)count * self->block - PGZIP_TAIL, PGZIP_TAIL);
        self->tail_len = PGZIP_TAIL;
    }
    return rc;
}

/* Remember the last PGZIP_TAIL bytes written to the current block. */
static void keep_tail(PgzipObject *self, const uint8_t *p, size_t n) {
    if (n >= PGZIP_TAIL) {
        memcpy(self->next_tail, p + n - PGZIP_TAIL, PGZIP_TAIL);
    } else {
        memmove(self->next_tail, self->next_tail + n, PGZIP_TAIL - n);
        memcpy(self->next_tail + PGZIP_TAIL - n, p, n);
    }
}

static void stream_start(PgzipObject *self) {
    kp_stream_reset(self->streams[0], &self->acc, self->tail_len ? self->tail : NULL,
                    self->tail_len);
}

/* threads == 1: code the input into the current block right away. */
static int pg_stream(PgzipObject *self, const uint8_t *p, size_t n) {
    kp_stream *s = self->streams[0];
    while (n > 0) {
        if (self->filled == 0) stream_start(self);
        size_t k = self->block - self->filled;
        if (k > n) k = n;
        kp_stream_write(s, p, k);
        keep_tail(self, p, k);
        self->filled += k;
        p += k;
        n -= k;
        if (self->filled == self->block) { /* a whole block is never the last one */
            kp_stream_flush(s);
            memcpy(self->tail, self->next_tail, PGZIP_TAIL);
            self->tail_len = PGZIP_TAIL;
            self->filled = 0;
        }
    }
    return self->acc.oom ? -1 : 0;
}

static int pg_stream_end(PgzipObject *self) {
    if (self->filled == 0) stream_start(self);
    kp_stream_flush(self->streams[0]);
    kp_stream_close(self->streams[0]);
    return self->acc.oom ? -1 : 0;
}

/* Consume input; whole batches of blocks are compressed as soon as they are complete. */
static int pg_feed(PgzipObject *self, const uint8_t *p, size_t n) {
    if (self->threads == 1) return pg_stream(self, p, n);
    size_t batch = self->buf_cap;
    while (n > 0) {
        if (self->buf_len == 0 && n >= batch) {
            if (run_blocks(self, p, self->threads, 0, 0) < 0) return -1;
            p += batch;
            n -= batch;
            continue;
        }
        size_t k = batch - self->buf_len;
        if (k > n) k = n;
        memcpy(self->buf + self->buf_len, p, k);
        self->buf_len += k;
        p += k;
        n -= k;
        if (self->buf_len == batch) {
            if (run_blocks(self, self->buf, self->threads, 0, 0) < 0) return -1;
            self->buf_len = 0;
        }
    }
    return 0;
}

static PyObject *take_acc(kp_buf *acc) {
    PyObject *r = PyBytes_FromStringAndSize((const char *)acc->p, (Py_ssize_t)acc->len);
    acc->len = 0;
    if (acc->cap > (8u << 20)) kp_buf_free(acc); /* do not keep a huge buffer around */
    return r;
}

static void pg_release(PgzipObject *self) {
    for (int i = 0; i < MAX_THREADS; i++) {
        kp_stream_free(self->streams[i]);
        self->streams[i] = NULL;
    }
    PyMem_RawFree(self->buf);
    self->buf = NULL;
    self->buf_len = self->buf_cap = 0;
    kp_buf_free(&self->acc);
}

static int Pgzip_init(PgzipObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"level", "block_size", "threads", NULL};
    int level = -1, threads = 0;
    Py_ssize_t block = 1 << 20;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|ini:PgzipDeflater", names, &level, &block,
                                     &threads))
        return -1;
    if (check_level(level) < 0) return -1;
    if (block <= PGZIP_TAIL || block > MAX_BLOCK) {
        PyErr_Format(PyExc_ValueError, "pgzip block_size must be in %d..%d, not %zd",
                     PGZIP_TAIL + 1, MAX_BLOCK, block);
        return -1;
    }
    if (threads < 0 || threads > MAX_THREADS) {
        PyErr_Format(PyExc_ValueError, "threads must be 0 (automatic) .. %d", MAX_THREADS);
        return -1;
    }
    if (threads == 0) { /* up to 4 by CPU count, and at most AUTO_BATCH bytes of blocks */
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cpus < 1 ? 1 : cpus > 4 ? 4 : (int)cpus;
        while (threads > 1 && (size_t)threads * (size_t)block > AUTO_BATCH) threads--;
    }
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    self->ready = 0;
    pg_release(self); /* __init__ called again: start over */
    self->level = level;
    self->threads = threads;
    self->block = (size_t)block;
    self->finished = 0;
    self->tail_len = 0;
    self->filled = 0;
    if (threads == 1) {
        self->streams[0] = kp_stream_new(level);
        if (!self->streams[0]) {
            PyErr_NoMemory();
            return -1;
        }
    } else {
        self->buf_cap = (size_t)threads * (size_t)block;
        self->buf = PyMem_RawMalloc(self->buf_cap);
        if (!self->buf) {
            PyErr_NoMemory();
            return -1;
        }
    }
    self->ready = 1;
    return 0;
}

static void Pgzip_dealloc(PgzipObject *self) {
    pg_release(self);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int pg_usable(PgzipObject *self) {
    if (!self->ready && !self->finished) {
        PyErr_SetString(PyExc_ValueError, "PgzipDeflater is not initialised");
        return 0;
    }
    if (self->finished) {
        PyErr_SetString(PyExc_ValueError, "PgzipDeflater already finished");
        return 0;
    }
    return 1;
}

static int has_lock(PyThread_type_lock lock, const char *what) {
    if (lock) return 1;
    PyErr_Format(PyExc_ValueError, "%s is not initialised", what);
    return 0;
}

static PyObject *Pgzip_compress(PgzipObject *self, PyObject *arg) {
    if (!has_lock(self->lock, "PgzipDeflater")) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = NULL;
    lock_obj(self->lock);
    if (pg_usable(self)) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        rc = pg_feed(self, view.buf, (size_t)view.len);
        Py_END_ALLOW_THREADS
        if (rc < 0) {
            self->acc.len = 0;
            PyErr_NoMemory();
        } else {
            result = take_acc(&self->acc);
        }
    }
    PyThread_release_lock(self->lock);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *Pgzip_finish(PgzipObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!has_lock(self->lock, "PgzipDeflater")) return NULL;
    PyObject *result = NULL;
    lock_obj(self->lock);
    if (pg_usable(self)) {
        int rc;
        Py_BEGIN_ALLOW_THREADS
        if (self->threads == 1) {
            rc = pg_stream_end(self);
        } else {
            size_t whole = self->buf_len / self->block;
            rc = run_blocks(self, self->buf, (int)whole, 1, self->buf_len - whole * self->block);
        }
        Py_END_ALLOW_THREADS
        self->finished = 1;
        self->ready = 0;
        if (rc < 0) PyErr_NoMemory();
        else result = take_acc(&self->acc);
        pg_release(self);
    }
    PyThread_release_lock(self->lock);
    return result;
}

static PyObject *Pgzip_get_level(PgzipObject *self, void *c) { return PyLong_FromLong(self->level); }
static PyObject *Pgzip_get_block(PgzipObject *self, void *c) {
    return PyLong_FromSize_t(self->block);
}
static PyObject *Pgzip_get_threads(PgzipObject *self, void *c) {
    return PyLong_FromLong(self->threads);
}

static PyMethodDef Pgzip_methods[] = {
    {"compress", (PyCFunction)Pgzip_compress, METH_O,
     "compress(data) -> bytes: consume data; return the deflate bytes completed so far."},
    {"finish", (PyCFunction)Pgzip_finish, METH_NOARGS,
     "finish() -> bytes: compress the rest and end the stream (the object is then spent)."},
    {NULL},
};

static PyGetSetDef Pgzip_getset[] = {
    {"level", (getter)Pgzip_get_level, NULL, "klauspost compression level", NULL},
    {"block_size", (getter)Pgzip_get_block, NULL, "pgzip block size in bytes", NULL},
    {"threads", (getter)Pgzip_get_threads, NULL, "blocks compressed at once", NULL},
    {NULL},
};

static PyTypeObject PgzipType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "chunkstore.native._kpflate.PgzipDeflater",
    .tp_basicsize = sizeof(PgzipObject),
    .tp_dealloc = (destructor)Pgzip_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PgzipDeflater(level=-1, block_size=1048576, threads=0): the raw deflate body of "
              "klauspost/pgzip v1.2.5 over klauspost/compress v1.15.12 flate.",
    .tp_methods = Pgzip_methods,
    .tp_getset = Pgzip_getset,
    .tp_init = (initproc)Pgzip_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------ single stream */

typedef struct {
    PyObject_HEAD
    kp_stream *s;
    kp_buf out;
    int level;
    int finished;
    PyThread_type_lock lock;
} DeflaterObject;

static int Deflater_init(DeflaterObject *self, PyObject *args, PyObject *kw) {
    static char *names[] = {"level", NULL};
    int level = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|i:Deflater", names, &level)) return -1;
    if (check_level(level) < 0) return -1;
    if (!self->lock && !(self->lock = PyThread_allocate_lock())) {
        PyErr_NoMemory();
        return -1;
    }
    kp_stream_free(self->s);
    kp_buf_free(&self->out);
    self->s = kp_stream_new(level);
    if (!self->s) {
        PyErr_NoMemory();
        return -1;
    }
    kp_stream_reset(self->s, &self->out, NULL, 0);
    self->level = level;
    self->finished = 0;
    return 0;
}

static void Deflater_dealloc(DeflaterObject *self) {
    kp_stream_free(self->s);
    kp_buf_free(&self->out);
    if (self->lock) PyThread_free_lock(self->lock);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int df_usable(DeflaterObject *self) {
    if (!self->s) {
        PyErr_SetString(PyExc_ValueError,
                        self->finished ? "Deflater already finished" : "Deflater is not initialised");
        return 0;
    }
    return 1;
}

static PyObject *df_take(DeflaterObject *self) {
    if (self->out.oom) {
        kp_buf_free(&self->out);
        return PyErr_NoMemory();
    }
    PyObject *r = take_acc(&self->out);
    return r;
}

static PyObject *Deflater_compress(DeflaterObject *self, PyObject *arg) {
    if (!has_lock(self->lock, "Deflater")) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = NULL;
    lock_obj(self->lock);
    if (df_usable(self)) {
        Py_BEGIN_ALLOW_THREADS
        kp_stream_write(self->s, view.buf, (size_t)view.len);
        Py_END_ALLOW_THREADS
        result = df_take(self);
    }
    PyThread_release_lock(self->lock);
    PyBuffer_Release(&view);
    return result;
}

static PyObject *Deflater_flush(DeflaterObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!has_lock(self->lock, "Deflater")) return NULL;
    PyObject *result = NULL;
    lock_obj(self->lock);
    if (df_usable(self)) {
        Py_BEGIN_ALLOW_THREADS
        kp_stream_flush(self->s);
        Py_END_ALLOW_THREADS
        result = df_take(self);
    }
    PyThread_release_lock(self->lock);
    return result;
}

static PyObject *Deflater_finish(DeflaterObject *self, PyObject *Py_UNUSED(ignored)) {
    if (!has_lock(self->lock, "Deflater")) return NULL;
    PyObject *result = NULL;
    lock_obj(self->lock);
    if (df_usable(self)) {
        Py_BEGIN_ALLOW_THREADS
        kp_stream_close(self->s);
        Py_END_ALLOW_THREADS
        result = df_take(self);
        kp_stream_free(self->s);
        self->s = NULL;
        kp_buf_free(&self->out);
        self->finished = 1;
    }
    PyThread_release_lock(self->lock);
    return result;
}

static PyMethodDef Deflater_methods[] = {
    {"compress", (PyCFunction)Deflater_compress, METH_O,
     "compress(data) -> bytes: consume data; return the deflate bytes completed so far."},
    {"flush", (PyCFunction)Deflater_flush, METH_NOARGS,
     "flush() -> bytes: klauspost Writer.Flush (a sync flush); return the bytes so far."},
    {"finish", (PyCFunction)Deflater_finish, METH_NOARGS,
     "finish() -> bytes: klauspost Writer.Close; the object is then spent."},
    {NULL},
};

static PyTypeObject DeflaterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "chunkstore.native._kpflate.Deflater",
    .tp_basicsize = sizeof(DeflaterObject),
    .tp_dealloc = (destructor)Deflater_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Deflater(level=-1): one klauspost/compress v1.15.12 flate stream (raw deflate).",
    .tp_methods = Deflater_methods,
    .tp_init = (initproc)Deflater_init,
    .tp_new = PyType_GenericNew,
};

/* ------------------------------------------------------------------ module */

static struct PyModuleDef kpmodule = {
    PyModuleDef_HEAD_INIT,
    .m_name = "chunkstore.native._kpflate",
    .m_doc = "klauspost compress/flate v1.15.12 and pgzip v1.2.5 deflate streams, byte-identical.",
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__kpflate(void) {
    kp_tables_init();
    if (PyType_Ready(&PgzipType) < 0 || PyType_Ready(&DeflaterType) < 0) return NULL;
    PyObject *m = PyModule_Create(&kpmodule);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "PgzipDeflater", (PyObject *)&PgzipType) < 0 ||
        PyModule_AddObjectRef(m, "Deflater", (PyObject *)&DeflaterType) < 0 ||
        PyModule_AddStringConstant(m, "KLAUSPOST_COMPRESS_VERSION", "1.15.12") < 0 ||
        PyModule_AddStringConstant(m, "PGZIP_VERSION", "1.2.5") < 0 ||
        PyModule_AddIntConstant(m, "PGZIP_TAIL", PGZIP_TAIL) < 0 ||
        PyModule_AddIntConstant(m, "PGZIP_DEFAULT_BLOCK", 1 << 20) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
