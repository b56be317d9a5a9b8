/* pigz 2.6's gzip body, over the system zlib.
 *
 * pigz cuts its input into blocks of exactly `block_size` bytes (the last one shorter) and
 * deflates each one separately: a fresh zlib stream (deflateInit2 at level 6, window 15, memory
 * level 8, then deflateReset and deflateParams to the real level) primed with the last 32 KiB of
 * the input before the block as a preset dictionary (none with --independent). A block that is not
 * the last ends on a byte boundary so the pieces can be concatenated: deflate(Z_BLOCK), then either
 * an empty stored block (Z_SYNC_FLUSH, when the pending bit count is odd, and always with
 * --independent) or as many empty fixed blocks as it takes (deflatePrime of the 10 bits 0b0000000
 * 010). --independent adds a second empty stored block (Z_FULL_FLUSH). The last block ends with
 * Z_FINISH; empty input is one empty block (a normal member, 03 00).
 *
 * Each block's bytes depend only on that block and the 32 KiB before it, so blocks can be
 * compressed on several threads; the output does not depend on the thread count. With -p 1 pigz
 * takes another path (one continuous zlib stream with the same flushes between blocks) that gives
 * the same bytes at levels 4..9 but not 1..3; `serial` reproduces that path.
 *
 * Whether a full block is the last one is only known when more input arrives (or the input ends),
 * so a full block waits for the next byte before it is compressed.
 */
#include "common.h"

#include <pthread.h>
#include <zlib.h>

#define DICT 32768u

typedef struct job {
    const uint8_t *data;
    size_t len;
    const uint8_t *dict;
    size_t dict_len;
    gz_out out;
    int failed;
} job;

struct pz_state {
    int level, independent, serial, threads;
    size_t block;
    z_stream *strms; /* one per thread; strms[0] is the serial stream */
    int nstrms;
    z_stream last_strm; /* a never-used stream for the last block (see pz_feed) */
    int last_ready;
    uint8_t *buf;    /* [DICT bytes of dictionary room][block bytes of the current block] */
    size_t dict_len; /* dictionary bytes, ending at buf + DICT */
    size_t have;     /* bytes of the current block at buf + DICT */
    int first;       /* no block has been compressed yet */
    int finished;
    gz_out out;
    job *jobs;
    size_t njobs_cap;
};

/* deflate() until it leaves output room unused, as pigz's deflate_engine does. */
static int run_deflate(z_stream *strm, gz_out *out, int flush) {
    do {
        size_t room = strm->avail_in + (strm->avail_in >> 3) + 65536;
        if (gz_out_reserve(out, room) != 0)
            return -1;
        room = out->cap - out->len;
        if (room > UINT_MAX)
            room = UINT_MAX;
        strm->next_out = out->data + out->len;
        strm->avail_out = (unsigned)room;
        int ret = deflate(strm, flush);
        if (ret == Z_STREAM_ERROR)
            return -1;
        out->len = (size_t)(strm->next_out - out->data);
    } while (strm->avail_out == 0);
    return 0;
}

/* Compress one block on `strm` into `out`. `fresh` streams get pigz's per-job reset. */
static int deflate_block(const pz_state *s, z_stream *strm, gz_out *out, const uint8_t *data,
                         size_t len, const uint8_t *dict, size_t dict_len, int last) {
    if (!s->serial) {
        if (deflateReset(strm) != Z_OK)
            return -1;
        (void)deflateParams(strm, s->level, Z_DEFAULT_STRATEGY);
        if (dict != NULL && dict_len > 0 &&
            deflateSetDictionary(strm, dict, (uInt)dict_len) != Z_OK)
            return -1;
    }
    strm->next_in = (Bytef *)data;
    strm->avail_in = (uInt)len;
    if (last)
        return run_deflate(strm, out, Z_FINISH);
    if (run_deflate(strm, out, Z_BLOCK) != 0)
        return -1;
    int bits = 0;
    (void)deflatePending(strm, Z_NULL, &bits);
    if ((bits & 1) || s->independent) {
        if (run_deflate(strm, out, Z_SYNC_FLUSH) != 0)
            return -1;
    } else if (bits & 7) {
        do {
            if (deflatePrime(strm, 10, 2) != Z_OK)
                return -1;
            (void)deflatePending(strm, Z_NULL, &bits);
        } while (bits & 7);
        if (run_deflate(strm, out, s->serial ? Z_NO_FLUSH : Z_BLOCK) != 0)
            return -1;
    }
    if (s->independent && run_deflate(strm, out, Z_FULL_FLUSH) != 0)
        return -1;
    return 0;
}

/* The serial path: one stream for everything, reset between blocks only with --independent. */
static int serial_block(pz_state *s, const uint8_t *data, size_t len, int last) {
    z_stream *strm = &s->strms[0];
    if (s->independent && !s->first && deflateReset(strm) != Z_OK)
        return -1;
    s->first = 0;
    return deflate_block(s, strm, &s->out, data, len, NULL, 0, last);
}

typedef struct worker {
    pz_state *s;
    z_stream *strm;
    size_t njobs;
    size_t *next; /* shared job counter */
    pthread_mutex_t *lock;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    for (;;) {
        pthread_mutex_lock(w->lock);
        size_t i = (*w->next)++;
        pthread_mutex_unlock(w->lock);
        if (i >= w->njobs)
            break;
        job *j = &w->s->jobs[i];
        j->failed = deflate_block(w->s, w->strm, &j->out, j->data, j->len, j->dict, j->dict_len, 0);
    }
    return NULL;
}

/* Compress the queued non-last jobs (possibly on several threads) and append them in order. */
static int run_jobs(pz_state *s, size_t njobs) {
    if (njobs == 0)
        return 0;
    size_t next = 0;
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    int nthreads = s->nstrms;
    if ((size_t)nthreads > njobs)
        nthreads = (int)njobs;
    worker ws[64];
    pthread_t tids[64];
    int started = 0;
    for (int t = 0; t < nthreads; t++)
        ws[t] = (worker){s, &s->strms[t], njobs, &next, &lock};
    for (int t = 1; t < nthreads; t++) {
        if (pthread_create(&tids[t], NULL, work, &ws[t]) != 0)
            break;
        started = t;
    }
    work(&ws[0]);
    for (int t = 1; t <= started; t++)
        pthread_join(tids[t], NULL);
    int failed = 0;
    for (size_t i = 0; i < njobs; i++) {
        job *j = &s->jobs[i];
        if (j->failed || j->out.failed)
            failed = 1;
        else
            gz_out_put(&s->out, j->out.data, j->out.len);
        gz_out_release(&j->out);
    }
    return failed || s->out.failed ? -1 : 0;
}

static int queue_job(pz_state *s, size_t *njobs, const uint8_t *data, size_t len,
                     const uint8_t *dict, size_t dict_len) {
    if (*njobs == s->njobs_cap) {
        size_t cap = s->njobs_cap ? s->njobs_cap * 2 : 16;
        job *p = realloc(s->jobs, cap * sizeof(job));
        if (p == NULL)
            return -1;
        s->jobs = p;
        s->njobs_cap = cap;
    }
    s->jobs[(*njobs)++] = (job){data, len, dict, dict_len, {0}, 0};
    return 0;
}

/* The buffered block is full and more input follows: compress it, keep its tail as dictionary. */
static int flush_buffered(pz_state *s) {
    int rc;
    if (s->serial) {
        rc = serial_block(s, s->buf + DICT, s->have, 0);
    } else {
        size_t njobs = 0;
        const uint8_t *dict = (s->independent || s->first) ? NULL : s->buf + DICT - s->dict_len;
        if (queue_job(s, &njobs, s->buf + DICT, s->have, dict, s->dict_len) != 0)
            return -1;
        rc = run_jobs(s, njobs);
        s->first = 0;
    }
    memcpy(s->buf, s->buf + DICT + s->have - DICT, DICT);
    s->dict_len = DICT;
    s->have = 0;
    return rc;
}

int pz_feed(pz_state *s, const uint8_t *data, size_t len, int final) {
    if (s->finished)
        return 0;
    /* Top up the buffered block; compress it once it is full and more input is known to follow. */
    if (s->have > 0 || len < s->block) {
        size_t take = s->block - s->have;
        if (take > len)
            take = len;
        memcpy(s->buf + DICT + s->have, data, take);
        s->have += take;
        data += take;
        len -= take;
        if (s->have == s->block && len > 0 && flush_buffered(s) != 0)
            return -1;
    }
    /* Whole blocks straight from the caller's buffer, each followed by more input. */
    if (len > s->block) {
        size_t njobs = 0, off = 0;
        while (len - off > s->block) {
            const uint8_t *blk = data + off;
            if (s->serial) {
                if (serial_block(s, blk, s->block, 0) != 0)
                    return -1;
            } else {
                const uint8_t *dict = NULL;
                size_t dict_len = 0;
                if (!s->independent && !s->first) {
                    if (off == 0) {
                        dict = s->buf + DICT - s->dict_len;
                        dict_len = s->dict_len;
                    } else {
                        dict = blk - DICT;
                        dict_len = DICT;
                    }
                }
                s->first = 0;
                if (queue_job(s, &njobs, blk, s->block, dict, dict_len) != 0)
                    return -1;
            }
            off += s->block;
        }
        if (run_jobs(s, njobs) != 0)
            return -1;
        /* The last of those blocks is the next dictionary. */
        memcpy(s->buf, data + off - DICT, DICT);
        s->dict_len = DICT;
        memcpy(s->buf + DICT, data + off, len - off);
        s->have = len - off;
        len = 0;
    } else if (len > 0) {
        memcpy(s->buf + DICT, data, len);
        s->have = len;
    }
    if (final) {
        int rc;
        if (s->serial) {
            rc = serial_block(s, s->buf + DICT, s->have, 1);
        } else {
            const uint8_t *dict =
                (s->independent || s->first) ? NULL : s->buf + DICT - s->dict_len;
            /* A short last block does not fill zlib's window, and the match finder can look at
             * the bytes past its end: a stream's leftovers from earlier blocks. pigz gives the
             * job to whichever thread is free; a fresh stream (zeros there, as pigz has for a
             * one-block input) keeps the output independent of how the input was split. */
            rc = deflate_block(s, &s->last_strm, &s->out, s->buf + DICT, s->have, dict,
                               s->dict_len, 1);
        }
        s->finished = 1;
        if (rc != 0)
            return -1;
    }
    return s->out.failed ? -1 : 0;
}

pz_state *pz_create(int level, size_t block_size, int independent, int serial, int threads) {
    pz_state *s = calloc(1, sizeof(pz_state));
    if (s == NULL)
        return NULL;
    s->level = level;
    s->block = block_size;
    s->independent = independent;
    s->serial = serial;
    s->first = 1;
    if (threads < 1 || serial)
        threads = 1;
    if (threads > 64)
        threads = 64;
    s->buf = malloc(DICT + block_size);
    s->strms = calloc((size_t)threads, sizeof(z_stream));
    if (s->buf == NULL || s->strms == NULL) {
        pz_destroy(s);
        return NULL;
    }
    for (int t = 0; t < threads; t++) {
        if (deflateInit2(&s->strms[t], 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
            pz_destroy(s);
            return NULL;
        }
        s->nstrms = t + 1;
    }
    if (deflateInit2(&s->last_strm, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        pz_destroy(s);
        return NULL;
    }
    s->last_ready = 1;
    if (serial) {
        (void)deflateReset(&s->strms[0]);
        (void)deflateParams(&s->strms[0], level, Z_DEFAULT_STRATEGY);
    }
    return s;
}

void pz_destroy(pz_state *s) {
    if (s == NULL)
        return;
    for (int t = 0; t < s->nstrms; t++)
        deflateEnd(&s->strms[t]);
    if (s->last_ready)
        deflateEnd(&s->last_strm);
    free(s->strms);
    free(s->buf);
    free(s->jobs);
    gz_out_release(&s->out);
    free(s);
}

gz_out *pz_output(pz_state *s) { return &s->out; }
