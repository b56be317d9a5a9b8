/* Block writers: how klauspost chooses between stored, fixed-code and dynamic-code blocks, and when
 * it keeps a dynamic table open so that the next chunk of tokens reuses it.
 *
 * "open_hdr" is the heart of the reuse scheme: a dynamic block whose table was written but whose
 * end-of-block code was not. The next block either continues it (if the old table codes every
 * symbol it needs and klauspost's estimate says a new table would not pay) or closes it first.
 */
#include <stdint.h>

#include "kp.h"

static const uint8_t cl_order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};

#define CL_END 255

static inline void put_sym(kp_bw *w, const kp_code *c, unsigned s) {
    kp_bw_put(w, c->code[s], c->len[s]);
}

/* Close the open block, if any. */
static void close_open(kp_bw *w) {
    if (w->open_hdr > 0) {
        put_sym(w, w->lit, KP_EOB);
        w->open_hdr = 0;
    }
}

void kp_bw_stored_header(kp_bw *w, size_t len, int eof) {
    close_open(w);
    if (len == 0 && eof) { /* the final empty block is a 10-bit fixed block, not 5 stored bytes */
        kp_bw_put(w, 3, 3);
        kp_bw_put(w, 0, 7);
        kp_bw_align(w);
        return;
    }
    kp_bw_put(w, eof ? 1 : 0, 3);
    kp_bw_align(w);
    kp_bw_put(w, len, 16);
    kp_bw_put(w, ~len & 0xffff, 16);
}

static void write_stored(kp_bw *w, const uint8_t *in, size_t n, int eof) {
    kp_bw_stored_header(w, n, eof);
    kp_bw_raw(w, in, n);
}

/* ---------------------------------------------------------------- sizes (in bits) */

static int cost(const kp_code *c, const uint16_t *f, int n) {
    int total = 0;
    for (int i = 0; i < n; i++)
        if (f[i]) total += (int)f[i] * c->len[i];
    return total;
}

static int extra_bits(const kp_bw *w) {
    int total = 0;
    for (int i = 0; i < KP_NLIT - 257; i++) total += (int)w->lfreq[257 + i] * kp_lext[i];
    for (int i = 0; i < KP_NDIST; i++) total += (int)w->dfreq[i] * kp_dext[i];
    return total;
}

static int fixed_size(const kp_bw *w, int extra) {
    return 3 + cost(&kp_fixed_lit, w->lfreq, KP_NLIT) + cost(&kp_fixed_dist, w->dfreq, KP_NDIST) +
           extra;
}

static int used_cl(const kp_bw *w) {
    int n = 19;
    while (n > 4 && w->clfreq[cl_order[n - 1]] == 0) n--;
    return n;
}

static int header_size(const kp_bw *w) {
    return 3 + 5 + 5 + 4 + 3 * used_cl(w) + cost(&w->cl, w->clfreq, 19) + w->clfreq[16] * 2 +
           w->clfreq[17] * 3 + w->clfreq[18] * 7;
}

/* klauspost's lower bound for coding the tokens with a fresh optimal table: Shannon entropy with a
 * cheap float32 log2, each symbol costing 1..15 bits, plus extra bits. The float32 arithmetic is
 * done step by step through volatiles so that no compiler fuses a multiply-add. */
static float fast_log2(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    int32_t ux = (int32_t)u;
    float lg = (float)(((ux >> 23) & 255) - 128);
    ux &= ~0x7f800000;
    ux += 127 << 23;
    float m;
    u = (uint32_t)ux;
    memcpy(&m, &u, 4);
    volatile float a = -0.34484843f * m;
    volatile float b = a + 2.02466578f;
    volatile float c = b * m;
    volatile float d = c - 0.67487759f;
    return lg + d;
}

static float sym_bits(uint16_t v, float inv) {
    float n = (float)v;
    volatile float p = n * inv;
    float e = -fast_log2(p);
    if (e < 1) e = 1;
    if (e > 15) e = 15;
    volatile float r = e * n;
    return r;
}

static int estimate(const kp_tokens *t) {
    float sh = 0;
    int bits = 0, nmatch = 0;
    if (t->n > 0) {
        float inv = 1.0f / (float)t->n;
        for (int i = 0; i < 256; i++)
            if (t->lit[i]) sh += sym_bits(t->lit[i], inv);
        sh += 15;
        for (int i = 0; i < KP_NLIT - 257; i++) {
            uint16_t v = t->lsym[i + 1];
            if (v) {
                sh += sym_bits(v, inv);
                bits += kp_lext[i] * v;
                nmatch += v;
            }
        }
    }
    if (nmatch > 0) {
        float inv = 1.0f / (float)nmatch;
        for (int i = 0; i < KP_NDIST; i++) {
            uint16_t v = t->dsym[i];
            if (v) {
                sh += sym_bits(v, inv);
                bits += kp_dext[i] * v;
            }
        }
    }
    return (int)sh + bits;
}

/* ---------------------------------------------------------------- table headers */

static void cl_emit(kp_bw *w, int *k, unsigned sym, int arg) {
    w->clseq[(*k)++] = (uint8_t)sym;
    if (sym >= 16) w->clseq[(*k)++] = (uint8_t)arg;
    w->clfreq[sym]++;
}

/* Run-length code the lengths of nlit literal and ndist distance symbols (RFC 1951 3.2.7). */
static void make_clseq(kp_bw *w, const kp_code *lit, int nlit, const uint8_t *dlen, int ndist) {
    uint8_t lens[KP_NLIT + KP_NDIST + 1];
    int total = nlit + ndist, k = 0;
    memcpy(lens, lit->len, (size_t)nlit);
    memcpy(lens + nlit, dlen, (size_t)ndist);
    memset(w->clfreq, 0, sizeof w->clfreq);
    int i = 0;
    while (i < total) {
        uint8_t v = lens[i];
        int run = 1;
        while (i + run < total && lens[i + run] == v) run++;
        i += run;
        if (v != 0) {
            cl_emit(w, &k, v, 0);
            run--;
            while (run >= 3) {
                int r = run < 6 ? run : 6;
                cl_emit(w, &k, 16, r - 3);
                run -= r;
            }
        } else {
            while (run >= 11) {
                int r = run < 138 ? run : 138;
                cl_emit(w, &k, 18, r - 11);
                run -= r;
            }
            if (run >= 3) {
                cl_emit(w, &k, 17, run - 3);
                run = 0;
            }
        }
        while (run-- > 0) cl_emit(w, &k, v, 0);
    }
    w->clseq[k] = CL_END;
}

static void write_header(kp_bw *w, int nlit, int ndist, int ncl, int eof) {
    kp_bw_put(w, eof ? 5 : 4, 3);
    kp_bw_put(w, (unsigned)(nlit - 257), 5);
    kp_bw_put(w, (unsigned)(ndist - 1), 5);
    kp_bw_put(w, (unsigned)(ncl - 4), 4);
    for (int i = 0; i < ncl; i++) kp_bw_put(w, w->cl.len[cl_order[i]], 3);
    for (int i = 0; w->clseq[i] != CL_END; i++) {
        unsigned s = w->clseq[i];
        put_sym(w, &w->cl, s);
        if (s == 16) kp_bw_put(w, w->clseq[++i], 2);
        else if (s == 17) kp_bw_put(w, w->clseq[++i], 3);
        else if (s == 18) kp_bw_put(w, w->clseq[++i], 7);
    }
}

/* ---------------------------------------------------------------- tokens */

static void write_tokens(kp_bw *w, const kp_tokens *t, const kp_code *lc, const kp_code *dc) {
    for (uint32_t i = 0; i < t->n; i++) {
        uint32_t v = t->v[i];
        if (!(v & KP_MATCH)) {
            put_sym(w, lc, v);
            continue;
        }
        uint32_t len3 = (v >> 15) & 255, dist1 = v & 0x7fff, d = (v >> 23) & 31;
        uint32_t l = kp_lcode[len3];
        put_sym(w, lc, 257 + l);
        if (l >= 8) {
            static const uint8_t lbase[29] = {0,  1,  2,  3,  4,  5,  6,   7,   8,   10,
                                              12, 14, 16, 20, 24, 28, 32,  40,  48,  56,
                                              64, 80, 96, 112, 128, 160, 192, 224, 255};
            kp_bw_put(w, len3 - lbase[l], kp_lext[l]);
        }
        put_sym(w, dc, d);
        if (d >= 4) {
            static const uint16_t dbase[30] = {
                0,   1,   2,   3,   4,    6,    8,    12,   16,   24,   32,   48,    64,    96,    128,
                192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 12288, 16384, 24576};
            kp_bw_put(w, (dist1 - dbase[d]) & 0xffff, kp_dext[d]);
        }
    }
}

/* Copy the token histograms into the writer; returns the symbol counts a header must describe. */
static void take_counts(kp_bw *w, const kp_tokens *t, int all, int *nlit, int *ndist) {
    memcpy(w->lfreq, t->lit, sizeof t->lit);
    memcpy(w->lfreq + 256, t->lsym, sizeof t->lsym); /* 256..287; 288 stays 0 */
    memcpy(w->dfreq, t->dsym, sizeof w->dfreq);
    *nlit = *ndist = 0;
    if (t->n == 0) return;
    if (all) { /* a block left open must be able to take any symbol later: describe them all */
        *nlit = KP_NLIT;
        *ndist = KP_NDIST;
        return;
    }
    int n = KP_NLIT + 3;
    while (w->lfreq[n - 1] == 0) n--;
    *nlit = n;
    n = 32;
    while (n > 0 && w->dfreq[n - 1] == 0) n--;
    if (n == 0) { /* no match: still describe one distance code */
        w->dfreq[0] = 1;
        n = 1;
    }
    *ndist = n;
}

static int table_covers(const kp_bw *w, const kp_tokens *t) {
    for (int i = 0; i < KP_NDIST; i++)
        if (t->dsym[i] && !w->dist.len[i]) return 0;
    for (int i = 0; i < KP_NLIT - 256; i++)
        if (t->lsym[i] && !w->lit->len[256 + i]) return 0;
    for (int i = 0; i < 256; i++)
        if (t->lit[i] && !w->lit->len[i]) return 0;
    return 1;
}

static void write_fixed(kp_bw *w, kp_tokens *t, int eof, int sync) {
    close_open(w);
    kp_bw_put(w, eof ? 3 : 2, 3);
    if (!sync) kp_tok_eob(t);
    write_tokens(w, t, &kp_fixed_lit, &kp_fixed_dist);
}

void kp_bw_dynamic(kp_bw *w, kp_tokens *t, int eof, const uint8_t *in, size_t inlen, int have_in,
                   int sync) {
    sync = sync || eof;
    if (sync) kp_tok_eob(t);
    if ((w->open_litonly || eof) && w->open_hdr > 0) {
        put_sym(w, w->lit, KP_EOB);
        w->open_hdr = 0;
        w->open_litonly = 0;
    }
    if (w->open_hdr > 0 && !table_covers(w, t)) close_open(w);

    int nlit, ndist;
    take_counts(w, t, !sync, &nlit, &ndist);
    int storable = have_in && inlen <= KP_CHUNK;
    int stored_bits = storable ? (int)(inlen + 5) * 8 : 0;
    int extra = (storable || w->open_hdr > 0) ? extra_bits(w) : 0;
    int size = 0;

    if (w->open_hdr > 0) {
        int fresh = w->open_hdr + estimate(t);
        fresh += w->lit->len[KP_EOB] + (fresh >> w->penalty);
        int reuse = cost(w->lit, w->lfreq, KP_NLIT) + cost(&w->dist, w->dfreq, KP_NDIST) + extra;
        if (fresh < reuse) {
            put_sym(w, w->lit, KP_EOB);
            w->open_hdr = 0;
            size = fresh;
        } else {
            size = reuse;
        }
        if (t->n < 250 && fixed_size(w, extra) + 7 < size) {
            if (storable && stored_bits <= size) write_stored(w, in, inlen, eof);
            else write_fixed(w, t, eof, sync);
            return;
        }
        if (storable && stored_bits <= size) {
            write_stored(w, in, inlen, eof);
            return;
        }
    }

    if (w->open_hdr == 0) {
        w->lfreq[KP_EOB] = 1;
        kp_code_build(w->lit, w->lfreq, KP_NLIT, 15);
        kp_code_build(&w->dist, w->dfreq, KP_NDIST, 15);
        make_clseq(w, w->lit, nlit, w->dist.len, ndist);
        kp_code_build(&w->cl, w->clfreq, 19, 7);
        size = header_size(w) + cost(w->lit, w->lfreq, KP_NLIT) + cost(&w->dist, w->dfreq, KP_NDIST) +
               extra;
        if (t->n < 250) {
            int fixed = fixed_size(w, extra);
            if (fixed <= size) {
                if (storable && stored_bits <= fixed) write_stored(w, in, inlen, eof);
                else write_fixed(w, t, eof, sync);
                return;
            }
        }
        if (storable && stored_bits <= size) {
            write_stored(w, in, inlen, eof);
            return;
        }
        write_header(w, nlit, ndist, used_cl(w), eof);
        if (!sync) w->open_hdr = header_size(w);
        w->open_litonly = 0;
    }
    if (sync) w->open_hdr = 0;
    write_tokens(w, t, w->lit, &w->dist);
}

/* ---------------------------------------------------------------- literal-only blocks */

static int reuse_bits(const kp_code *c, const uint16_t *f, int n) {
    int total = 0;
    for (int i = 0; i < n; i++) {
        if (!f[i]) continue;
        if (!c->len[i]) return INT32_MAX;
        total += (int)f[i] * c->len[i];
    }
    return total;
}

void kp_bw_literals(kp_bw *w, int eof, const uint8_t *in, size_t n, int sync) {
    memset(w->lfreq, 0, sizeof w->lfreq);
    if (!w->open_litonly) memset(w->dfreq, 0, sizeof w->dfreq);
    for (size_t i = 0; i < n; i++) w->lfreq[in[i]]++;
    int storable = n <= KP_CHUNK;
    int stored_bits = (int)(n + 5) * 8;

    if (storable && n > 1024) { /* flat histogram: nothing to gain, store */
        double spread = 0, avg = (double)n / 256, limit = (double)(n * 2);
        for (int i = 0; i < 256; i++) {
            volatile double d = (double)w->lfreq[i] - avg;
            volatile double sq = d * d;
            spread += sq;
            if (spread > limit) break;
        }
        if (spread < limit) {
            write_stored(w, in, n, eof);
            return;
        }
    }
    w->lfreq[KP_EOB] = 1;
    kp_code_build(w->spare, w->lfreq, 257, 15);
    int est = reuse_bits(w->spare, w->lfreq, 257);
    if (est < INT32_MAX) {
        est += w->open_hdr;
        if (w->open_hdr == 0) est += 70 * 8; /* guessed header size */
        est += est >> w->penalty;
    }
    if (storable && stored_bits <= est) {
        write_stored(w, in, n, eof);
        return;
    }
    if (w->open_hdr > 0 && est < reuse_bits(w->lit, w->lfreq, 256)) close_open(w);
    if (w->open_hdr == 0) {
        kp_code *tmp = w->lit;
        w->lit = w->spare;
        w->spare = tmp;
        static const uint8_t one_dist[1] = {1};
        make_clseq(w, w->lit, 257, one_dist, 1);
        kp_code_build(&w->cl, w->clfreq, 19, 7);
        write_header(w, 257, 1, used_cl(w), eof);
        w->open_litonly = 1;
        w->open_hdr = header_size(w);
    }
    const kp_code *c = w->lit;
    for (size_t i = 0; i < n; i++) kp_bw_put(w, c->code[in[i]], c->len[in[i]]);
    if (eof || sync) {
        put_sym(w, w->lit, KP_EOB);
        w->open_hdr = 0;
        w->open_litonly = 0;
    }
}
