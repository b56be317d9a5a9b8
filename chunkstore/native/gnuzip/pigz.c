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
    size_t first_cut, ncuts; /* pieces (rsyncable): ends in pz_state.cuts, relative to data */
    int last;                /* the stream's last job: ends with Z_FINISH */
    gz_out out;
    int failed;
} job;

struct pz_state {
    int level, independent, serial, rsyncable;
    size_t block;
    z_stream *strms; /* one per thread; strms[0] is the serial stream */
    int nstrms;
    z_stream last_strm; /* a never-used stream for the last job (see finish_jobs) */
    int last_ready;
    int first;          /* no job has been compressed yet */
    int finished;
    uint64_t since_reset; /* serial --independent: bytes since the last reset */
    gz_out out;
    job *jobs;
    size_t njobs, njobs_cap;
    size_t *cuts;
    size_t ncuts, cuts_cap;

    /* fixed blocks: [DICT bytes of dictionary room][block bytes of the current block] */
    uint8_t *buf;
    size_t dict_len; /* dictionary bytes, ending at buf + DICT */
    size_t have;     /* bytes of the current block at buf + DICT */

    /* --rsyncable: input kept from absolute offset rbase (32 KiB before the next job on) */
    uint8_t *rbuf;
    size_t rlen, rcap;
    uint64_t rbase;
    unsigned hash;     /* pigz's rolling hash, run up to `scanned` */
    uint64_t scanned;
    uint64_t *hits; /* absolute offsets just after a hash hit, ascending, all > start */
    size_t nhits, hits_cap;
    uint64_t start;  /* where the next job (parallel) or piece (serial) starts */
    size_t curr;     /* parallel: bytes pigz holds in its current input buffer at `start` */
    int64_t held;    /* parallel: length of its next buffer when held over, -1 when read fresh */
    int begun;       /* parallel: the first buffer has been read */
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

/* pigz's start of a job (parallel path): reset, set the level, load the dictionary. */
static int start_job(const pz_state *s, z_stream *strm, const uint8_t *dict, size_t dict_len) {
    if (deflateReset(strm) != Z_OK)
        return -1;
    (void)deflateParams(strm, s->level, Z_DEFAULT_STRATEGY);
    if (dict != NULL && dict_len > 0 && deflateSetDictionary(strm, dict, (uInt)dict_len) != Z_OK)
        return -1;
    return 0;
}

/* Deflate one piece and end it: Z_FINISH for the very last one, else on a byte boundary. */
static int deflate_piece(const pz_state *s, z_stream *strm, gz_out *out, const uint8_t *data,
                         size_t len, int last) {
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

/* One parallel-path job: its pieces end at the offsets cuts[0..ncuts) (the last is j->len), or
 * it is one piece when ncuts is 0. */
static int deflate_job(const pz_state *s, z_stream *strm, gz_out *out, const job *j) {
    if (start_job(s, strm, j->dict, j->dict_len) != 0)
        return -1;
    if (j->ncuts == 0)
        return deflate_piece(s, strm, out, j->data, j->len, j->last);
    const size_t *cuts = s->cuts + j->first_cut;
    size_t pos = 0;
    for (size_t i = 0; i < j->ncuts; i++) {
        if (deflate_piece(s, strm, out, j->data + pos, cuts[i] - pos, j->last && cuts[i] == j->len))
            return -1;
        pos = cuts[i];
    }
    return 0;
}

/* The serial path (-p 1): one stream for everything. With --independent pigz resets it before a
 * piece once the pieces since the last reset would pass the block size. */
static int serial_piece(pz_state *s, const uint8_t *data, size_t len, int last) {
    z_stream *strm = &s->strms[0];
    if (s->independent) {
        s->since_reset += len;
        if (s->since_reset > s->block) {
            if (deflateReset(strm) != Z_OK)
                return -1;
            s->since_reset = len;
        }
    }
    return deflate_piece(s, strm, &s->out, data, len, last);
}

typedef struct worker {
    pz_state *s;
    z_stream *strm;
    size_t *next; /* shared job counter */
    pthread_mutex_t *lock;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    pz_state *s = w->s;
    for (;;) {
        pthread_mutex_lock(w->lock);
        size_t i = (*w->next)++;
        pthread_mutex_unlock(w->lock);
        /* the last job waits for finish_jobs (it runs on its own stream) */
        if (i >= s->njobs || s->jobs[i].last)
            break;
        job *j = &s->jobs[i];
        j->failed = deflate_job(s, w->strm, &j->out, j);
    }
    return NULL;
}

/* Compress the queued jobs (several threads when there are several jobs) and append their
 * output in order. Job data must stay where it is until this returns. */
static int finish_jobs(pz_state *s) {
    size_t njobs = s->njobs;
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
        ws[t] = (worker){s, &s->strms[t], &next, &lock};
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
        if (j->last) {
            /* A short last job does not fill zlib's window, and the match finder may look at the
             * bytes past its end: a stream's leftovers from earlier jobs. pigz gives the job to
             * whichever thread is free; a fresh stream (zeros there, as pigz has for a one-block
             * input) keeps the output independent of how the input was split. */
            j->failed = deflate_job(s, &s->last_strm, &j->out, j);
        }
        if (failed || j->failed || j->out.failed)
            failed = 1;
        else
            gz_out_put(&s->out, j->out.data, j->out.len);
        gz_out_release(&j->out);
    }
    s->njobs = 0;
    s->ncuts = 0;
    return failed || s->out.failed ? -1 : 0;
}

static int queue_job(pz_state *s, const uint8_t *data, size_t len, const uint8_t *dict,
                     size_t dict_len, int last) {
    if (s->njobs == s->njobs_cap) {
        size_t cap = s->njobs_cap ? s->njobs_cap * 2 : 16;
        job *p = realloc(s->jobs, cap * sizeof(job));
        if (p == NULL)
            return -1;
        s->jobs = p;
        s->njobs_cap = cap;
    }
    s->jobs[s->njobs++] = (job){data, len, dict, dict_len, s->ncuts, 0, last, {0}, 0};
    s->first = 0;
    return 0;
}

static int add_cut(pz_state *s, size_t end) {
    if (s->ncuts == s->cuts_cap) {
        size_t cap = s->cuts_cap ? s->cuts_cap * 2 : 256;
        size_t *p = realloc(s->cuts, cap * sizeof(size_t));
        if (p == NULL)
            return -1;
        s->cuts = p;
        s->cuts_cap = cap;
    }
    s->cuts[s->ncuts++] = end;
    s->jobs[s->njobs - 1].ncuts++;
    return 0;
}

/* ---- fixed blocks (no --rsyncable) ---- */

/* One block of the fixed-block path: a job (parallel), or a piece of the one stream (serial). */
static int block_out(pz_state *s, const uint8_t *data, size_t len, const uint8_t *dict,
                     size_t dict_len, int last) {
    if (s->serial)
        return serial_piece(s, data, len, last);
    if (s->independent || s->first)
        dict = NULL, dict_len = 0;
    return queue_job(s, data, len, dict, dict_len, last);
}

/* The buffered block is full and more input follows: compress it, keep its tail as dictionary. */
static int flush_buffered(pz_state *s) {
    if (block_out(s, s->buf + DICT, s->have, s->buf + DICT - s->dict_len, s->dict_len, 0) != 0 ||
        finish_jobs(s) != 0)
        return -1;
    memcpy(s->buf, s->buf + s->have, DICT);
    s->dict_len = DICT;
    s->have = 0;
    return 0;
}

static int feed_blocks(pz_state *s, const uint8_t *data, size_t len, int final) {
    /* Top up the buffered block; compress it once it is full and more input is known to follow. */
    if (s->have > 0 || len < s->block) {
        size_t take = s->block - s->have;
        if (take > len)
            take = len;
        if (take)
            memcpy(s->buf + DICT + s->have, data, take);
        s->have += take;
        data += take;
        len -= take;
        if (s->have == s->block && len > 0 && flush_buffered(s) != 0)
            return -1;
    }
    /* Whole blocks straight from the caller's buffer, each followed by more input. */
    if (len > s->block) {
        size_t off = 0;
        while (len - off > s->block) {
            const uint8_t *dict = off == 0 ? s->buf + DICT - s->dict_len : data + off - DICT;
            size_t dict_len = off == 0 ? s->dict_len : DICT;
            if (block_out(s, data + off, s->block, dict, dict_len, 0) != 0)
                return -1;
            off += s->block;
        }
        if (finish_jobs(s) != 0)
            return -1;
        memcpy(s->buf, data + off - DICT, DICT); /* the last of those blocks is the dictionary */
        s->dict_len = DICT;
        memcpy(s->buf + DICT, data + off, len - off);
        s->have = len - off;
    } else if (len > 0) {
        memcpy(s->buf + DICT, data, len);
        s->have = len;
    }
    if (final) {
        if (block_out(s, s->buf + DICT, s->have, s->buf + DICT - s->dict_len, s->dict_len, 1) != 0 ||
            finish_jobs(s) != 0)
            return -1;
        s->finished = 1;
    }
    return 0;
}

/* ---- --rsyncable ---- */

#define RSYNC_MASK 0xfffu
#define RSYNC_HIT (RSYNC_MASK >> 1)

/* Run the rolling hash over the input up to absolute offset `end`, noting each hit. */
static int scan_to(pz_state *s, uint64_t end) {
    unsigned h = s->hash;
    for (uint64_t p = s->scanned; p < end; p++) {
        h = ((h << 1) ^ s->rbuf[p - s->rbase]) & RSYNC_MASK;
        if (h == RSYNC_HIT) {
            if (s->nhits == s->hits_cap) {
                size_t cap = s->hits_cap ? s->hits_cap * 2 : 64;
                uint64_t *q = realloc(s->hits, cap * sizeof(uint64_t));
                if (q == NULL)
                    return -1;
                s->hits = q;
                s->hits_cap = cap;
            }
            s->hits[s->nhits++] = p + 1;
        }
    }
    s->hash = h;
    if (end > s->scanned)
        s->scanned = end;
    return 0;
}

/* The last hit in (lo, hi], or 0 when there is none. */
static uint64_t last_hit(const pz_state *s, uint64_t lo, uint64_t hi) {
    size_t a = 0, b = s->nhits; /* first index with hit > hi */
    while (a < b) {
        size_t m = (a + b) / 2;
        if (s->hits[m] <= hi)
            a = m + 1;
        else
            b = m;
    }
    return a > 0 && s->hits[a - 1] > lo ? s->hits[a - 1] : 0;
}

static void drop_hits(pz_state *s, uint64_t upto) {
    size_t k = 0;
    while (k < s->nhits && s->hits[k] <= upto)
        k++;
    if (k == 0)
        return;
    memmove(s->hits, s->hits + k, (s->nhits - k) * sizeof(uint64_t));
    s->nhits -= k;
}

/* Queue a job for [start, end): its pieces end at each hit inside and at `end`. */
static int rsync_job(pz_state *s, uint64_t end, int last) {
    uint64_t start = s->start;
    size_t dict_len = 0;
    const uint8_t *dict = NULL;
    if (!s->independent && !s->first) {
        dict_len = start < DICT ? (size_t)start : DICT;
        dict = s->rbuf + (start - dict_len - s->rbase);
    }
    if (queue_job(s, s->rbuf + (start - s->rbase), (size_t)(end - start), dict, dict_len, last))
        return -1;
    for (size_t k = 0; k < s->nhits && s->hits[k] < end; k++)
        if (s->hits[k] > start && add_cut(s, (size_t)(s->hits[k] - start)) != 0)
            return -1;
    return add_cut(s, (size_t)(end - start));
}

/* Parallel path: cut jobs the way pigz's reader does. It holds `curr` bytes at `start` and a next
 * buffer (a fresh read of a block, or a held-over one); it scans up to a block from `start` and
 * ends the job at the last hit there, or after a block when there is none; at the end of the input
 * it takes all of what it holds. Each hit inside a job ends a piece. */
static int rsync_parallel(pz_state *s, int final) {
    uint64_t avail = s->rbase + s->rlen;
    while (!s->finished) {
        if (!s->begun) {
            if (!final && avail < s->block)
                return 0;
            s->curr = avail < s->block ? (size_t)avail : s->block;
            s->begun = 1;
        }
        uint64_t start = s->start, cend = start + s->curr;
        if (s->curr == 0) { /* empty input: one empty piece */
            if (queue_job(s, s->rbuf, 0, NULL, 0, 1) != 0)
                return -1;
            s->finished = 1;
            break;
        }
        size_t n;
        if (s->held >= 0) {
            n = (size_t)s->held;
        } else {
            if (!final && avail < cend + s->block)
                return 0;
            n = avail - cend < s->block ? (size_t)(avail - cend) : s->block;
        }
        size_t room = s->block - s->curr < n ? s->block - s->curr : n;
        if (scan_to(s, cend + room) != 0)
            return -1;
        uint64_t in_next = last_hit(s, cend, cend + room);
        uint64_t in_curr = last_hit(s, start, cend);
        uint64_t end;
        size_t curr2;
        int64_t held2 = -1;
        if (in_next) {
            end = in_next;
            curr2 = (size_t)(cend + n - end);
        } else if (in_curr && in_curr < cend && n > 0) {
            end = in_curr;
            curr2 = (size_t)(cend - end);
            held2 = (int64_t)n;
        } else if (!in_curr) {
            end = cend + room;
            curr2 = n - room;
        } else {
            end = cend;
            curr2 = n;
        }
        int last = curr2 == 0;
        if (rsync_job(s, end, last) != 0)
            return -1;
        drop_hits(s, end);
        s->start = end;
        s->curr = curr2;
        s->held = held2;
        if (last)
            s->finished = 1;
    }
    return 0;
}

/* Serial path (-p 1): a piece ends at the first hit within a block of its start, or after a
 * block; at the end of the input it takes the rest. */
static int rsync_serial(pz_state *s, int final) {
    uint64_t avail = s->rbase + s->rlen;
    while (!s->finished) {
        uint64_t start = s->start, limit = start + s->block;
        if (scan_to(s, limit < avail ? limit : avail) != 0)
            return -1;
        uint64_t end = 0;
        for (size_t k = 0; k < s->nhits; k++)
            if (s->hits[k] > start) {
                end = s->hits[k];
                break;
            }
        if (end == 0 || end > limit) {
            if (avail >= limit)
                end = limit;
            else if (final)
                end = avail;
            else
                return 0;
        }
        if (end == avail && !final)
            return 0; /* is it the last piece? not known yet */
        int last = final && end == avail;
        if (serial_piece(s, s->rbuf + (start - s->rbase), (size_t)(end - start), last) != 0)
            return -1;
        drop_hits(s, end);
        s->start = end;
        if (last)
            s->finished = 1;
    }
    return 0;
}

static int feed_rsync(pz_state *s, const uint8_t *data, size_t len, int final) {
    /* Take the input in slices so that the kept input stays within a few blocks. */
    size_t slice = s->block < ((size_t)4 << 20) ? (size_t)4 << 20 : s->block;
    do {
        size_t take = len < slice ? len : slice;
        if (s->rlen + take > s->rcap || s->rbuf == NULL) {
            size_t cap = s->rcap ? s->rcap : 65536;
            while (cap < s->rlen + take)
                cap *= 2;
            uint8_t *p = realloc(s->rbuf, cap);
            if (p == NULL)
                return -1;
            s->rbuf = p;
            s->rcap = cap;
        }
        if (take)
            memcpy(s->rbuf + s->rlen, data, take);
        s->rlen += take;
        data += take;
        len -= take;
        int at_end = final && len == 0;
        int rc = s->serial ? rsync_serial(s, at_end) : rsync_parallel(s, at_end);
        if (rc != 0 || finish_jobs(s) != 0)
            return -1;
        /* keep 32 KiB before the next job (its dictionary) and everything after */
        uint64_t keep = s->start > DICT ? s->start - DICT : 0;
        if (keep > s->rbase) {
            size_t drop = (size_t)(keep - s->rbase);
            memmove(s->rbuf, s->rbuf + drop, s->rlen - drop);
            s->rlen -= drop;
            s->rbase = keep;
        }
    } while (len > 0);
    return 0;
}

int pz_feed(pz_state *s, const uint8_t *data, size_t len, int final) {
    if (s->finished)
        return 0;
    int rc = s->rsyncable ? feed_rsync(s, data, len, final) : feed_blocks(s, data, len, final);
    if (rc == 0 && final && !s->finished)
        rc = -1; /* cannot happen: the last job is always cut at the end */
    return rc != 0 || s->out.failed ? -1 : 0;
}

pz_state *pz_create(int level, size_t block_size, int independent, int serial, int rsyncable,
                    int threads) {
    pz_state *s = calloc(1, sizeof(pz_state));
    if (s == NULL)
        return NULL;
    s->level = level;
    s->block = block_size;
    s->independent = independent;
    s->serial = serial;
    s->rsyncable = rsyncable;
    s->first = 1;
    s->hash = RSYNC_HIT;
    s->held = -1;
    if (threads < 1 || serial)
        threads = 1;
    if (threads > 64)
        threads = 64;
    if (!rsyncable && (s->buf = malloc(DICT + block_size)) == NULL)
        goto fail;
    if ((s->strms = calloc((size_t)threads, sizeof(z_stream))) == NULL)
        goto fail;
    for (int t = 0; t < threads; t++) {
        if (deflateInit2(&s->strms[t], 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            goto fail;
        s->nstrms = t + 1;
    }
    if (deflateInit2(&s->last_strm, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        goto fail;
    s->last_ready = 1;
    if (serial) {
        (void)deflateReset(&s->strms[0]);
        (void)deflateParams(&s->strms[0], level, Z_DEFAULT_STRATEGY);
    }
    return s;
fail:
    pz_destroy(s);
    return NULL;
}

void pz_destroy(pz_state *s) {
    if (s == NULL)
        return;
    for (int t = 0; t < s->nstrms; t++)
        deflateEnd(&s->strms[t]);
    if (s->last_ready)
        deflateEnd(&s->last_strm);
    for (size_t i = 0; i < s->njobs; i++)
        gz_out_release(&s->jobs[i].out);
    free(s->strms);
    free(s->buf);
    free(s->rbuf);
    free(s->hits);
    free(s->jobs);
    free(s->cuts);
    gz_out_release(&s->out);
    free(s);
}

gz_out *pz_output(pz_state *s) { return &s->out; }
