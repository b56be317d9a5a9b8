/* The klauspost compress/zstd 1.15.12 streaming encoder at SpeedDefault, rewritten in C.
 *
 * What the Go writer does (and so what this file must do, bit for bit):
 *  - the frame header has the checksum flag, no content size and an 8 MiB window descriptor
 *    (the writer never knows the size up front once a block has been flushed);
 *  - containers/image first writes the 8 bytes it peeked at to detect compression, then copies
 *    the rest with ReadFrom, which flushes those 8 bytes as a block of their own; after that the
 *    input is cut into 128 KiB blocks and the remainder (possibly empty) is the last block;
 *  - every block is matched by the "double fast" finder (a long table hashed on 8 bytes, a short
 *    one on 5, history of up to 8 MiB in a 16 MiB buffer), then coded: literals with Huffman
 *    (one or four streams, a table reused when its estimate wins), sequences with FSE tables
 *    chosen among predefined, repeat and new by an estimated cost; a block that does not shrink
 *    is stored raw;
 *  - the frame ends with the low 32 bits of the XXH64 of the input.
 */
#include "kz.h"

#include <stdlib.h>
#include <string.h>

#define BLOCK_MAX (128 * 1024)
#define WINDOW_DEFAULT (8 << 20)
#define RESET_AT (0x7fffffff - (1 << 29))
#define LONG_BITS 17
#define SHORT_BITS 15
#define MAX_MATCH 131074
#define NOSYM 0xF0F0F0F0u

/* ------------------------------------------------------------------ small helpers */

int kz_buf_reserve(kz_buf *b, size_t extra) {
    if (b->oom) return -1;
    if (b->len + extra <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void kz_buf_free(kz_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

static void put(kz_buf *b, const void *p, size_t n) {
    if (kz_buf_reserve(b, n)) return;
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void put1(kz_buf *b, uint8_t v) {
    if (kz_buf_reserve(b, 1)) return;
    b->p[b->len++] = v;
}

static inline uint64_t ld64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Go's uint32(bits.Len32(v) - 1): -1 (all ones) for 0. */
static inline uint32_t hibit(uint32_t v) { return v ? 31u - (uint32_t)__builtin_clz(v) : 0xffffffffu; }

/* ------------------------------------------------------------------ XXH64 */

#define P64_1 0x9E3779B185EBCA87ull
#define P64_2 0xC2B2AE3D27D4EB4Full
#define P64_3 0x165667B19E3779F9ull
#define P64_4 0x85EBCA77C2B2AE63ull
#define P64_5 0x27D4EB2F165667C5ull

typedef struct {
    uint64_t v[4];
    uint64_t total;
    uint8_t mem[32];
    size_t memlen;
} xxh;

static inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static inline uint64_t xround(uint64_t acc, uint64_t in) {
    acc += in * P64_2;
    return rotl(acc, 31) * P64_1;
}
static inline uint64_t xmerge(uint64_t acc, uint64_t v) {
    acc ^= xround(0, v);
    return acc * P64_1 + P64_4;
}

static void xxh_init(xxh *h) {
    memset(h, 0, sizeof(*h));
    h->v[0] = P64_1 + P64_2;
    h->v[1] = P64_2;
    h->v[2] = 0;
    h->v[3] = (uint64_t)0 - P64_1;
}

static void xxh_stripe(xxh *h, const uint8_t *p) {
    for (int i = 0; i < 4; i++) h->v[i] = xround(h->v[i], ld64(p + 8 * i));
}

static void xxh_update(xxh *h, const uint8_t *p, size_t n) {
    h->total += n;
    if (h->memlen) {
        size_t take = 32 - h->memlen;
        if (take > n) take = n;
        memcpy(h->mem + h->memlen, p, take);
        h->memlen += take;
        p += take;
        n -= take;
        if (h->memlen < 32) return;
        xxh_stripe(h, h->mem);
        h->memlen = 0;
    }
    while (n >= 32) {
        xxh_stripe(h, p);
        p += 32;
        n -= 32;
    }
    memcpy(h->mem, p, n);
    h->memlen = n;
}

static uint64_t xxh_digest(const xxh *h) {
    uint64_t acc;
    if (h->total >= 32) {
        acc = rotl(h->v[0], 1) + rotl(h->v[1], 7) + rotl(h->v[2], 12) + rotl(h->v[3], 18);
        for (int i = 0; i < 4; i++) acc = xmerge(acc, h->v[i]);
    } else {
        acc = P64_5;
    }
    acc += h->total;
    const uint8_t *p = h->mem;
    size_t n = h->memlen;
    for (; n >= 8; p += 8, n -= 8) acc = rotl(acc ^ xround(0, ld64(p)), 27) * P64_1 + P64_4;
    if (n >= 4) {
        acc = rotl(acc ^ ((uint64_t)ld32(p) * P64_1), 23) * P64_2 + P64_3;
        p += 4;
        n -= 4;
    }
    for (; n; p++, n--) acc = rotl(acc ^ (*p * P64_5), 11) * P64_1;
    acc ^= acc >> 33;
    acc *= P64_2;
    acc ^= acc >> 29;
    acc *= P64_3;
    acc ^= acc >> 32;
    return acc;
}

/* ------------------------------------------------------------------ bit writer (LSB first) */

typedef struct {
    uint64_t acc;
    unsigned n;
    kz_buf *out;
} bitw;

static inline void bw_put(bitw *w, uint32_t v, unsigned nb) {
    if (w->n >= 32) {
        uint8_t b[4] = {(uint8_t)w->acc, (uint8_t)(w->acc >> 8), (uint8_t)(w->acc >> 16),
                        (uint8_t)(w->acc >> 24)};
        put(w->out, b, 4);
        w->acc >>= 32;
        w->n -= 32;
    }
    if (nb == 0) return;
    uint64_t m = nb >= 32 ? 0xffffffffull : ((1ull << nb) - 1);
    w->acc |= ((uint64_t)v & m) << w->n;
    w->n += nb;
}

static void bw_close(bitw *w) {
    bw_put(w, 1, 1);
    while (w->n > 0) {
        put1(w->out, (uint8_t)w->acc);
        w->acc >>= 8;
        w->n = w->n >= 8 ? w->n - 8 : 0;
    }
}

/* ------------------------------------------------------------------ FSE tables */

typedef struct {
    uint32_t dnb; /* deltaNbBits */
    int32_t dfs;  /* deltaFindState */
    uint8_t ob;   /* extra bits written after the state bits */
} tt_ent;

typedef struct {
    uint32_t count[256];
    int16_t norm[256];
    uint16_t state[256];
    tt_ent tt[256];
    int symlen;
    uint8_t tlog;
    int maxcount;
    uint8_t rle, predef, reused, rleval;
} fse_t;

static const uint32_t RTB[8] = {0, 473195, 504333, 520860, 550000, 700000, 750000, 830000};

/* Spread the normalized counts; -1 when they do not add up (never for our inputs). */
static int norm_fallback(const uint32_t *count, int symlen, uint32_t length, unsigned tlog,
                         int16_t *norm) {
    const int16_t UNSET = -2;
    uint32_t given = 0, total = length;
    uint32_t low = total >> tlog, lowone = (total * 3) >> (tlog + 1);
    for (int i = 0; i < symlen; i++) {
        uint32_t c = count[i];
        if (c == 0) {
            norm[i] = 0;
        } else if (c <= low) {
            norm[i] = -1;
            given++;
            total -= c;
        } else if (c <= lowone) {
            norm[i] = 1;
            given++;
            total -= c;
        } else {
            norm[i] = UNSET;
        }
    }
    uint32_t left = (1u << tlog) - given;
    if (total / left > lowone) {
        lowone = (total * 3) / (left * 2);
        for (int i = 0; i < symlen; i++) {
            if (norm[i] == UNSET && count[i] <= lowone) {
                norm[i] = 1;
                given++;
                total -= count[i];
            }
        }
        left = (1u << tlog) - given;
    }
    if (given == (uint32_t)symlen + 1) {
        int best = 0;
        uint32_t bc = 0;
        for (int i = 0; i < symlen; i++)
            if (count[i] > bc) bc = count[i], best = i;
        norm[best] += (int16_t)left;
        return 0;
    }
    if (total == 0) {
        for (uint32_t i = 0; left > 0; i = (i + 1) % (uint32_t)symlen)
            if (norm[i] > 0) left--, norm[i]++;
        return 0;
    }
    uint64_t vlog = 62 - tlog;
    uint64_t mid = (1ull << (vlog - 1)) - 1;
    uint64_t rstep = (((1ull << vlog) * (uint64_t)left) + mid) / total;
    uint64_t run = mid;
    for (int i = 0; i < symlen; i++) {
        if (norm[i] != UNSET) continue;
        uint64_t end = run + (uint64_t)count[i] * rstep;
        uint32_t w = (uint32_t)(end >> vlog) - (uint32_t)(run >> vlog);
        if (w < 1) return -1;
        norm[i] = (int16_t)w;
        run = end;
    }
    return 0;
}

static int normalize(const uint32_t *count, int symlen, uint32_t length, unsigned tlog,
                     int16_t *norm) {
    uint64_t scale = 62 - tlog, step = (1ull << 62) / length, vstep = 1ull << (scale - 20);
    int16_t left = (int16_t)(1 << tlog), bigp = 0;
    int big = 0;
    uint32_t low = length >> tlog;
    for (int i = 0; i < symlen; i++) {
        uint32_t c = count[i];
        if (c == 0) {
            norm[i] = 0;
            continue;
        }
        if (c <= low) {
            norm[i] = -1;
            left--;
            continue;
        }
        int16_t p = (int16_t)(((uint64_t)c * step) >> scale);
        if (p < 8) {
            uint64_t beat = vstep * RTB[p];
            uint64_t rest = (uint64_t)c * step - ((uint64_t)p << scale);
            if (rest > beat) p++;
        }
        if (p > bigp) bigp = p, big = i;
        norm[i] = p;
        left -= p;
    }
    if (-left >= (norm[big] >> 1)) return norm_fallback(count, symlen, length, tlog, norm);
    norm[big] += left;
    return 0;
}

/* State table and per-symbol transforms from norm. */
static int build_ctable(const int16_t *norm, int symlen, unsigned tlog, uint16_t *state,
                        tt_ent *tt) {
    uint32_t size = 1u << tlog, high = size - 1;
    int16_t cumul[258];
    uint8_t sym[4096];
    cumul[0] = 0;
    for (int u = 0; u < symlen; u++) {
        if (norm[u] == -1) {
            cumul[u + 1] = (int16_t)(cumul[u] + 1);
            sym[high--] = (uint8_t)u;
        } else {
            cumul[u + 1] = (int16_t)(cumul[u] + norm[u]);
        }
    }
    if ((uint32_t)cumul[symlen] != size) return -1;
    uint32_t step = (size >> 1) + (size >> 3) + 3, mask = size - 1, pos = 0;
    for (int u = 0; u < symlen; u++) {
        for (int k = 0; k < norm[u]; k++) {
            sym[pos] = (uint8_t)u;
            do pos = (pos + step) & mask;
            while (pos > high);
        }
    }
    if (pos != 0) return -1;
    for (uint32_t u = 0; u < size; u++) state[cumul[sym[u]]++] = (uint16_t)(size + u);
    int32_t total = 0;
    uint32_t tl = (tlog << 16) - (1u << tlog);
    for (int i = 0; i < symlen; i++) {
        int16_t v = norm[i];
        if (v == 0) continue;
        if (v == -1 || v == 1) {
            tt[i].dnb = tl;
            tt[i].dfs = total - 1;
            total++;
        } else {
            uint32_t mb = tlog - hibit((uint32_t)(v - 1));
            tt[i].dnb = (mb << 16) - ((uint32_t)v << mb);
            tt[i].dfs = total - v;
            total += v;
        }
    }
    return total == (int32_t)size ? 0 : -1;
}

/* The normalized-count header (same layout in the fse package and zstd). */
static int write_ncount(kz_buf *out, const int16_t *norm, int symlen, unsigned tlog) {
    uint32_t size = 1u << tlog;
    uint32_t bits = tlog - 5;
    unsigned nbits_used = 4;
    int16_t remaining = (int16_t)(size + 1), threshold = (int16_t)size;
    unsigned nb = tlog + 1;
    int prev0 = 0;
    int ch = 0;
    uint8_t tmp[2];
#define EMIT16()                                   \
    do {                                           \
        tmp[0] = (uint8_t)bits;                    \
        tmp[1] = (uint8_t)(bits >> 8);             \
        put(out, tmp, 2);                          \
        bits >>= 16;                               \
    } while (0)
    while (remaining > 1) {
        if (prev0) {
            int start = ch;
            while (ch < 256 && norm[ch] == 0) ch++;
            while (ch >= start + 24) {
                start += 24;
                bits += 0xFFFFu << nbits_used;
                EMIT16();
            }
            while (ch >= start + 3) {
                start += 3;
                bits += 3u << nbits_used;
                nbits_used += 2;
            }
            bits += (uint32_t)(ch - start) << nbits_used;
            nbits_used += 2;
            if (nbits_used > 16) {
                EMIT16();
                nbits_used -= 16;
            }
        }
        int16_t count = norm[ch++];
        int16_t max = (int16_t)((2 * threshold - 1) - remaining);
        remaining = (int16_t)(count < 0 ? remaining + count : remaining - count);
        count++;
        if (count >= threshold) count = (int16_t)(count + max);
        bits += (uint32_t)(uint16_t)count << nbits_used;
        nbits_used += nb;
        if (count < max) nbits_used--;
        prev0 = count == 1;
        if (remaining < 1) return -1;
        while (remaining < threshold) {
            nb--;
            threshold >>= 1;
        }
        if (nbits_used > 16) {
            EMIT16();
            nbits_used -= 16;
        }
    }
#undef EMIT16
    tmp[0] = (uint8_t)bits;
    tmp[1] = (uint8_t)(bits >> 8);
    put(out, tmp, (nbits_used + 7) / 8);
    return ch > symlen ? -1 : 0;
}

/* zstd's table-size choice for sequence codes (at most 8). */
static unsigned seq_tablelog(uint32_t length, int symlen) {
    uint8_t tl = 8;
    uint32_t src = hibit(length) + 1, syms = hibit((uint32_t)symlen - 1) + 2;
    uint8_t minb = src < syms ? (uint8_t)src : (uint8_t)syms;
    uint8_t maxsrc = (uint8_t)((uint8_t)hibit(length - 1) - 2);
    if (maxsrc < tl) tl = maxsrc;
    if (minb > tl) tl = minb;
    if (tl < 5) tl = 5;
    if (tl > 8) tl = 8;
    return tl;
}

static uint32_t bit_cost(const fse_t *f, int sym) {
    uint32_t minb = f->tt[sym].dnb >> 16;
    uint32_t thr = (minb + 1) << 16;
    uint32_t size = 1u << f->tlog;
    uint32_t delta = thr - (f->tt[sym].dnb + size);
    uint32_t nd = (delta << 8) >> f->tlog;
    return (minb + 1) * 256 - nd;
}

static uint32_t approx_size(const fse_t *f, const uint32_t *hist, int n) {
    if (f->symlen < n || f->rle) return 0xffffffffu;
    uint32_t bad = ((uint32_t)f->tlog + 1) << 8, cost = 0;
    for (int i = 0; i < n; i++) {
        if (hist[i] == 0) continue;
        if (f->norm[i] == 0) return 0xffffffffu;
        uint32_t c = bit_cost(f, i);
        if (c > bad) return 0xffffffffu;
        cost += hist[i] * c;
    }
    return cost >> 8;
}

static uint32_t max_header_bits(const fse_t *f) {
    if (f->predef) return 0;
    if (f->rle) return 8;
    return ((((uint32_t)f->symlen * f->tlog) >> 3) + 3) * 8;
}

static void set_bits(fse_t *f, const uint8_t *tr) {
    if (f->reused || f->predef) return;
    if (f->rle) {
        f->tt[f->rleval].ob = tr ? tr[f->rleval] : f->rleval;
        return;
    }
    for (int i = 0; i < f->symlen; i++) f->tt[i].ob = tr ? tr[i] : (uint8_t)i;
}

/* Normalize the histogram in f (symlen, maxcount set) for `length` sequences. */
static int fse_prepare(fse_t *f, uint32_t length) {
    f->tlog = (uint8_t)seq_tablelog(length, f->symlen);
    if ((uint32_t)f->maxcount == length) {
        f->rle = 1;
        return 0;
    }
    f->rle = 0;
    if (normalize(f->count, f->symlen, length, f->tlog, f->norm)) return -1;
    return build_ctable(f->norm, f->symlen, f->tlog, f->state, f->tt);
}

static const uint8_t LL_BITS[36] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1,
                                    1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const uint8_t ML_BITS[53] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1,
                                    2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
static const int16_t LL_DEF[36] = {4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2,
                                   2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1, 1, 1, -1, -1, -1, -1};
static const int16_t OF_DEF[29] = {1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1,
                                   1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1};
static const int16_t ML_DEF[53] = {1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                   1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                   1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1};

static fse_t PREDEF[3]; /* ll, of, ml */
static int predef_ready;

static void predef_init(void) {
    if (predef_ready) return;
    const int16_t *src[3] = {LL_DEF, OF_DEF, ML_DEF};
    const int len[3] = {36, 29, 53};
    const uint8_t tl[3] = {6, 5, 6};
    const uint8_t *tr[3] = {LL_BITS, NULL, ML_BITS};
    for (int k = 0; k < 3; k++) {
        fse_t *f = &PREDEF[k];
        memset(f, 0, sizeof(*f));
        memcpy(f->norm, src[k], sizeof(int16_t) * (size_t)len[k]);
        f->symlen = len[k];
        f->tlog = tl[k];
        build_ctable(f->norm, f->symlen, f->tlog, f->state, f->tt);
        set_bits(f, tr[k]);
        f->predef = 1;
    }
    predef_ready = 1;
}

/* ------------------------------------------------------------------ FSE for Huffman weights */

/* Compress n weights (n >= 2) with FSE, max table log 6; -1 when the fse package gives up. */
static int fse_weights(const uint8_t *in, int n, const uint32_t *hist, int symlen, int maxcount,
                       kz_buf *out) {
    if (n <= 1) return -1;
    if (maxcount == n) return -1;
    if (maxcount == 1 || maxcount < (n >> 7)) return -1;
    uint8_t tl = 6;
    uint32_t src = hibit((uint32_t)n - 1) + 1, syms = hibit((uint32_t)symlen - 1) + 2;
    uint8_t minb = src < syms ? (uint8_t)src : (uint8_t)syms;
    uint8_t maxsrc = (uint8_t)((uint8_t)hibit((uint32_t)n - 1) - 2);
    if (maxsrc < tl) tl = maxsrc;
    if (minb > tl) tl = minb;
    if (tl < 5) tl = 5;
    if (tl > 12) tl = 12;
    int16_t norm[256];
    uint16_t state[4096];
    tt_ent tt[256];
    if (normalize(hist, symlen, (uint32_t)n, tl, norm)) return -1;
    size_t start = out->len;
    if (write_ncount(out, norm, symlen, tl)) return -1;
    if (build_ctable(norm, symlen, tl, state, tt)) return -1;
    if (n <= 2) return -1;
    bitw w = {0, 0, out};
    uint16_t s1 = 0, s2 = 0;
#define INIT(st, sy)                                                        \
    do {                                                                    \
        const tt_ent *t_ = &tt[sy];                                         \
        uint32_t nb_ = (t_->dnb + (1u << 15)) >> 16;                        \
        int32_t im_ = (int32_t)((nb_ << 16) - t_->dnb);                     \
        st = state[(im_ >> nb_) + t_->dfs];                                 \
    } while (0)
#define ENC(st, sy)                                                         \
    do {                                                                    \
        const tt_ent *t_ = &tt[sy];                                         \
        uint32_t nb_ = ((uint32_t)st + t_->dnb) >> 16;                      \
        int32_t d_ = (int32_t)(st >> (nb_ & 15)) + t_->dfs;                 \
        bw_put(&w, st, nb_);                                                \
        st = state[d_];                                                     \
    } while (0)
    int ip = n;
    if (ip & 1) {
        INIT(s1, in[ip - 1]);
        INIT(s2, in[ip - 2]);
        ENC(s1, in[ip - 3]);
        ip -= 3;
    } else {
        INIT(s2, in[ip - 1]);
        INIT(s1, in[ip - 2]);
        ip -= 2;
    }
    if (ip & 2) {
        ENC(s2, in[ip - 1]);
        ENC(s1, in[ip - 2]);
        ip -= 2;
    }
    while (ip >= 4) {
        ENC(s2, in[ip - 1]);
        ENC(s1, in[ip - 2]);
        ENC(s2, in[ip - 3]);
        ENC(s1, in[ip - 4]);
        ip -= 4;
    }
#undef INIT
#undef ENC
    bw_put(&w, s2, tl);
    bw_put(&w, s1, tl);
    bw_close(&w);
    if (out->oom) return -1;
    if (out->len - start >= (size_t)n) return -1;
    return 0;
}

/* ------------------------------------------------------------------ Huffman literals */

typedef struct {
    uint16_t val;
    uint8_t nbits;
} hent;

typedef struct {
    uint32_t count;
    uint16_t parent;
    uint8_t symbol, nbits;
} hnode;

typedef struct {
    uint32_t count[256];
    int symlen;
    hent ct[256];
    uint8_t tlog;
    hent prev[256];
    int prevlen;
    int allow; /* reuse policy: 1 allow, 0 none */
    hnode nodes[513];
} huf_t;

enum { H_OK = 0, H_RAW = 1, H_RLE = 2 };

static void huf_sort(huf_t *h) {
    hnode *nd = h->nodes + 1;
    struct {
        uint32_t base, cur;
    } rank[32];
    memset(rank, 0, sizeof(rank));
    for (int i = 0; i < h->symlen; i++) rank[hibit(h->count[i] + 1) & 31].base++;
    for (int n = 19; n > 0; n--) rank[n - 1].base += rank[n].base;
    for (int n = 0; n < 19; n++) rank[n].cur = rank[n].base;
    for (int n = 0; n < h->symlen; n++) {
        uint32_t c = h->count[n];
        uint32_t r = (hibit(c + 1) + 1) & 31;
        uint32_t pos = rank[r].cur++;
        hnode prev = nd[(pos - 1) & 511];
        while (pos > rank[r].base && c > prev.count) {
            nd[pos & 511] = prev;
            pos--;
            prev = nd[(pos - 1) & 511];
        }
        nd[pos & 511] = (hnode){c, 0, (uint8_t)n, 0};
    }
}

static uint8_t huf_limit(huf_t *h, int last, uint8_t maxnb) {
    hnode *nd = h->nodes + 1;
    uint8_t largest = nd[last].nbits;
    if (largest <= maxnb) return largest;
    int cost = 0;
    int basecost = 1 << (largest - maxnb);
    uint32_t n = (uint32_t)last;
    while (nd[n].nbits > maxnb) {
        cost += basecost - (1 << (largest - nd[n].nbits));
        nd[n].nbits = maxnb;
        n--;
    }
    while (nd[n].nbits == maxnb) n--;
    cost >>= largest - maxnb;
    uint32_t rl[13];
    for (int i = 0; i < 13; i++) rl[i] = NOSYM;
    {
        uint8_t curnb = maxnb;
        for (int pos = (int)n; pos >= 0; pos--) {
            if (nd[pos].nbits >= curnb) continue;
            curnb = nd[pos].nbits;
            rl[maxnb - curnb] = (uint32_t)pos;
        }
    }
    while (cost > 0) {
        uint8_t k = (uint8_t)(hibit((uint32_t)cost) + 1);
        for (; k > 1; k--) {
            uint32_t hi = rl[k], lo = rl[k - 1];
            if (hi == NOSYM) continue;
            if (lo == NOSYM) break;
            if (nd[hi].count <= 2 * nd[lo].count) break;
        }
        while (k <= 11 && rl[k] == NOSYM) k++;
        cost -= 1 << (k - 1);
        if (rl[k - 1] == NOSYM) rl[k - 1] = rl[k];
        nd[rl[k]].nbits++;
        if (rl[k] == 0) {
            rl[k] = NOSYM;
        } else {
            rl[k]--;
            if (nd[rl[k]].nbits != (uint8_t)(maxnb - k)) rl[k] = NOSYM;
        }
    }
    while (cost < 0) {
        if (rl[1] == NOSYM) {
            while (nd[n].nbits == maxnb) n--;
            nd[n + 1].nbits--;
            rl[1] = n + 1;
            cost++;
            continue;
        }
        nd[rl[1] + 1].nbits--;
        rl[1]++;
        cost++;
    }
    return maxnb;
}

static void huf_build(huf_t *h, int n) {
    uint8_t tl = 11;
    uint32_t src = hibit((uint32_t)n) + 1, syms = hibit((uint32_t)h->symlen - 1) + 2;
    uint8_t minb = src < syms ? (uint8_t)src : (uint8_t)syms;
    uint8_t maxsrc = (uint8_t)((uint8_t)hibit((uint32_t)n - 1) - 1);
    if (maxsrc < tl) tl = maxsrc;
    if (minb > tl) tl = minb;
    if (tl < 5) tl = 5;
    if (tl > 11) tl = 11;
    huf_sort(h);
    memset(h->ct, 0, sizeof(hent) * (size_t)h->symlen);
    hnode *nd = h->nodes + 1, *nd0 = h->nodes;
    int start = h->symlen;
    int nonnull = h->symlen - 1;
    while (nd[nonnull].count == 0) nonnull--;
    int lows = nonnull, nodenb = start;
    int root = nodenb + lows - 1, lown = nodenb;
    nd[nodenb].count = nd[lows].count + nd[lows - 1].count;
    nd[lows].parent = nd[lows - 1].parent = (uint16_t)nodenb;
    nodenb++;
    lows -= 2;
    for (int k = nodenb; k <= root; k++) nd[k].count = 1u << 30;
    nd0[0].count = 1u << 31;
    while (nodenb <= root) {
        int n1, n2;
        if (nd0[lows + 1].count < nd0[lown + 1].count) n1 = lows--;
        else n1 = lown++;
        if (nd0[lows + 1].count < nd0[lown + 1].count) n2 = lows--;
        else n2 = lown++;
        nd[nodenb].count = nd0[n1 + 1].count + nd0[n2 + 1].count;
        nd0[n1 + 1].parent = nd0[n2 + 1].parent = (uint16_t)nodenb;
        nodenb++;
    }
    nd[root].nbits = 0;
    for (int k = root - 1; k >= start; k--) nd[k].nbits = (uint8_t)(nd[nd[k].parent].nbits + 1);
    for (int k = 0; k <= nonnull; k++) nd[k].nbits = (uint8_t)(nd[nd[k].parent].nbits + 1);
    uint8_t maxnb = huf_limit(h, nonnull, tl);
    h->tlog = maxnb;
    uint16_t per[13] = {0}, val[16] = {0};
    for (int k = 0; k <= nonnull; k++) per[nd[k].nbits]++;
    uint16_t mn = 0;
    for (int k = maxnb; k > 0; k--) {
        val[k] = mn;
        mn = (uint16_t)(mn + per[k]);
        mn >>= 1;
    }
    for (int k = 0; k <= nonnull; k++) h->ct[nd[k].symbol].nbits = nd[k].nbits;
    for (int k = 0; k < h->symlen; k++) h->ct[k].val = val[h->ct[k].nbits & 15]++;
}

/* The table description: FSE-compressed weights, or 4-bit raw; -1 if neither is allowed. */
static int huf_write_table(huf_t *h, kz_buf *out) {
    uint8_t b2w[12] = {0};
    uint8_t w[257];
    uint32_t hist[256] = {0};
    int maxsym = h->symlen - 1;
    for (int k = 1; k <= h->tlog; k++) b2w[k] = (uint8_t)(h->tlog + 1 - k);
    for (int k = 0; k < maxsym; k++) {
        w[k] = b2w[h->ct[k].nbits] & 15;
        hist[w[k]]++;
    }
    if (maxsym >= 2) {
        uint32_t mc = 0;
        int mx = 0;
        for (int k = 0; k < 16; k++) {
            if (!hist[k]) continue;
            mx = k;
            if (hist[k] > mc) mc = hist[k];
        }
        kz_buf tmp = {0};
        int r = fse_weights(w, maxsym, hist, mx + 1, (int)mc, &tmp);
        if (tmp.oom) {
            kz_buf_free(&tmp);
            out->oom = 1;
            return -1;
        }
        if (r == 0 && tmp.len < (size_t)(h->symlen >> 1)) {
            put1(out, (uint8_t)tmp.len);
            put(out, tmp.p, tmp.len);
            kz_buf_free(&tmp);
            return 0;
        }
        kz_buf_free(&tmp);
    }
    if (maxsym > 128) return -1;
    put1(out, (uint8_t)(128 | (maxsym - 1)));
    w[maxsym] = 0;
    for (int k = 0; k < maxsym; k += 2) put1(out, (uint8_t)((w[k] << 4) | w[k + 1]));
    return 0;
}

static void huf_stream(const hent *ct, const uint8_t *src, size_t n, kz_buf *out) {
    bitw w = {0, 0, out};
    for (size_t i = n; i > 0; i--) {
        const hent *e = &ct[src[i - 1]];
        bw_put(&w, e->val, e->nbits);
    }
    bw_close(&w);
}

/* One or four Huffman streams with table ct appended to out; -1 if a stream is too long. */
static int huf_data(const hent *ct, const uint8_t *src, size_t n, int four, kz_buf *out) {
    if (!four) {
        huf_stream(ct, src, n, out);
        return 0;
    }
    size_t seg = (n + 3) / 4, jump = out->len;
    uint8_t zero[6] = {0};
    put(out, zero, 6);
    for (int i = 0; i < 4; i++) {
        size_t take = n < seg ? n : seg;
        size_t at = out->len;
        huf_stream(ct, src, take, out);
        src += take;
        n -= take;
        if (out->oom) return -1;
        size_t len = out->len - at;
        if (len > 65535) return -1;
        if (i < 3) {
            out->p[jump + 2 * i] = (uint8_t)len;
            out->p[jump + 2 * i + 1] = (uint8_t)(len >> 8);
        }
    }
    return 0;
}

static uint32_t huf_estimate(const hent *ct, const uint32_t *hist, int n) {
    uint32_t bits = 7;
    for (int i = 0; i < n; i++) bits += (uint32_t)ct[i].nbits * hist[i];
    return bits >> 3;
}

/* Compress literals as klauspost's huff0 does with WantLogLess 4. On H_OK, out holds the
 * section body (table unless *reused, then the streams). */
static int huf_compress(huf_t *h, const uint8_t *in, size_t n, int four, kz_buf *out,
                        int *reused) {
    if (!h->allow) h->prevlen = 0;
    memset(h->count, 0, sizeof(h->count));
    for (size_t i = 0; i < n; i++) h->count[in[i]]++;
    uint32_t maxc = 0;
    int canreuse = h->prevlen > 0;
    for (int i = 0; i < 256; i++) {
        uint32_t v = h->count[i];
        if (v > maxc) maxc = v;
        if (v) {
            h->symlen = i + 1;
            if (i >= h->prevlen || h->prev[i].nbits == 0) canreuse = 0;
        }
    }
    size_t want = n - (n >> 4);
    if (maxc >= n) return n == 1 ? H_RAW : H_RLE;
    if (maxc == 1 || maxc < (n >> 7)) return H_RAW;
    huf_build(h, (int)n);
    if (h->allow && canreuse) {
        uint32_t olds = huf_estimate(h->prev, h->count, h->symlen);
        uint32_t news = huf_estimate(h->ct, h->count, h->symlen);
        if (olds <= news || 12 >= want) {
            out->len = 0;
            if (huf_data(h->prev, in, n, four, out)) return out->oom ? -1 : H_RAW;
            if (out->len >= want) return H_RAW;
            *reused = 1;
            return H_OK;
        }
    }
    out->len = 0;
    if (huf_write_table(h, out)) return out->oom ? -1 : H_RAW;
    if (huf_data(h->ct, in, n, four, out)) return out->oom ? -1 : H_RAW;
    if (out->oom) return -1;
    if (out->len >= want) return H_RAW;
    memcpy(h->prev, h->ct, sizeof(hent) * (size_t)h->symlen);
    h->prevlen = h->symlen;
    *reused = 0;
    return H_OK;
}

/* ------------------------------------------------------------------ the encoder */

typedef struct {
    uint32_t ll, ml, of;
    uint8_t llc, mlc, ofc;
} seq_t;

typedef struct {
    int32_t off;
    uint32_t val;
} entry;

struct kz_enc {
    int level;
    size_t block;  /* input per block: 128 KiB, 64 KiB at SpeedFastest */
    int raw_lits;  /* blocks of literals only are stored raw (SpeedFastest) */
    size_t prefix;
    int32_t window;
    uint8_t *hist;
    size_t histlen, histcap;
    int32_t cur;
    entry *ltab, *stab;
    fse_t coders[6];
    fse_t *enc[3], *prv[3]; /* ll, of, ml */
    huf_t huf;
    uint8_t *lits;
    size_t nlits;
    seq_t *seqs;
    size_t nseq, seqcap;
    uint8_t *fill;
    size_t nfill;
    uint64_t fed;
    int header, done;
    xxh crc;
    kz_buf blk, tmp;
};

static inline uint32_t hash8(uint64_t u) { return (uint32_t)((u * 0xcf1bbcdcb7a56463ull) >> (64 - LONG_BITS)); }
static inline uint32_t hash6(uint64_t u) {
    return (uint32_t)(((u << 16) * 227718039650203ull) >> (64 - SHORT_BITS));
}
static inline uint32_t hash5(uint64_t u) {
    return (uint32_t)(((u << 24) * 889523592379ull) >> (64 - SHORT_BITS));
}

static int32_t match_len(const uint8_t *src, size_t len, int32_t s, int32_t t) {
    const uint8_t *a = src + s, *b = src + t;
    int32_t n = (int32_t)len - s, i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t d = ld64(a + i) ^ ld64(b + i);
        if (d) return i + (__builtin_ctzll(d) >> 3);
    }
    for (; i < n; i++)
        if (a[i] != b[i]) return i;
    return n;
}

static int add_seq(kz_enc *e, uint32_t ll, uint32_t ml, uint32_t of) {
    if (e->nseq == e->seqcap) {
        size_t cap = e->seqcap * 2;
        seq_t *p = realloc(e->seqs, cap * sizeof(seq_t));
        if (!p) return -1;
        e->seqs = p;
        e->seqcap = cap;
    }
    e->seqs[e->nseq++] = (seq_t){ll, ml, of, 0, 0, 0};
    return 0;
}

static void add_lits(kz_enc *e, const uint8_t *p, size_t n) {
    memcpy(e->lits + e->nlits, p, n);
    e->nlits += n;
}

/* Append src to the history (sliding it down when full); returns where src starts. */
static int32_t hist_add(kz_enc *e, const uint8_t *src, size_t n) {
    if (e->histlen + n > e->histcap) {
        size_t keep = (size_t)e->window;
        size_t off = e->histlen - keep;
        memmove(e->hist, e->hist + off, keep);
        e->cur += (int32_t)off;
        e->histlen = keep;
    }
    int32_t s = (int32_t)e->histlen;
    memcpy(e->hist + e->histlen, src, n);
    e->histlen += n;
    return s;
}

/* Before e->cur can overflow: forget or rebase the table entries (lt may be NULL). */
static void rebase(kz_enc *e, entry *lt, entry *st) {
    const int32_t maxoff = e->window;
    if (e->cur < RESET_AT) return;
    if (e->histlen == 0) {
        if (lt) memset(lt, 0, sizeof(entry) << LONG_BITS);
        memset(st, 0, sizeof(entry) << SHORT_BITS);
    } else {
        int32_t minoff = e->cur + (int32_t)e->histlen - maxoff;
        for (size_t i = 0; i < (1u << SHORT_BITS); i++)
            st[i].off = st[i].off < minoff ? 0 : st[i].off - e->cur + maxoff;
        for (size_t i = 0; lt && i < (1u << LONG_BITS); i++)
            lt[i].off = lt[i].off < minoff ? 0 : lt[i].off - e->cur + maxoff;
    }
    e->cur = maxoff;
}

/* The SpeedFastest match finder: one table hashed on 6 bytes, probing two positions. */
static int fast_block(kz_enc *e, const uint8_t *blk, size_t n) {
    entry *tb = e->stab;
    const int32_t maxoff = e->window;
    rebase(e, NULL, tb);
    int32_t s = hist_add(e, blk, n);
    if (n < 10) {
        add_lits(e, blk, n);
        return 0;
    }
    const uint8_t *src = e->hist;
    const size_t len = e->histlen;
    const int32_t slimit = (int32_t)len - 8;
    const int32_t cur = e->cur;
    int32_t next = s;
    uint64_t cv = ld64(src + s);
    int32_t off1 = 0, off2 = 0; /* never read before three sequences set them */

    for (;;) {
        int32_t t;
        int rep_ok = e->nseq > 2;
        for (;;) {
            uint32_t h0 = hash6(cv), h1 = hash6(cv >> 8);
            entry c0 = tb[h0], c1 = tb[h1];
            int32_t repi = s - off1 + 2;
            tb[h0] = (entry){s + cur, (uint32_t)cv};
            tb[h1] = (entry){s + cur + 1, (uint32_t)(cv >> 8)};
            if (rep_ok && repi >= 0 && ld32(src + repi) == (uint32_t)(cv >> 16)) {
                int32_t l = 4 + match_len(src, len, s + 6, repi + 4);
                uint32_t ml = (uint32_t)(l - 3);
                int32_t start = s + 2, lim = next + 1;
                int32_t smin = s - maxoff;
                if (smin < 0) smin = 0;
                while (repi > smin && start > lim && src[repi - 1] == src[start - 1] &&
                       ml < MAX_MATCH - 3) {
                    repi--;
                    start--;
                    ml++;
                }
                uint32_t ll = 0;
                if (start != next) {
                    add_lits(e, src + next, (size_t)(start - next));
                    ll = (uint32_t)(start - next);
                }
                if (add_seq(e, ll, ml, 1)) return -1;
                s += l + 2;
                next = s;
                if (s >= slimit) goto done;
                cv = ld64(src + s);
                continue;
            }
            int32_t d0 = s - (c0.off - cur), d1 = s - (c1.off - cur) + 1;
            if (d0 < maxoff && (uint32_t)cv == c0.val) {
                t = c0.off - cur;
                break;
            }
            if (d1 < maxoff && (uint32_t)(cv >> 8) == c1.val) {
                t = c1.off - cur;
                s++;
                break;
            }
            s += 2 + ((s - next) >> 5);
            if (s >= slimit) goto done;
            cv = ld64(src + s);
        }
        off2 = off1;
        off1 = s - t;
        int32_t l = match_len(src, len, s + 4, t + 4) + 4;
        int32_t tmin = s - maxoff;
        if (tmin < 0) tmin = 0;
        while (t > tmin && s > next && src[t - 1] == src[s - 1] && l < MAX_MATCH) {
            s--;
            t--;
            l++;
        }
        uint32_t ll = (uint32_t)(s - next);
        if (ll) add_lits(e, src + next, ll);
        if (add_seq(e, ll, (uint32_t)(l - 3), (uint32_t)(s - t) + 3)) return -1;
        s += l;
        next = s;
        if (s >= slimit) break;
        cv = ld64(src + s);
        int32_t o2 = s - off2;
        if (rep_ok && o2 >= 0 && ld32(src + o2) == (uint32_t)cv) {
            int32_t l2 = 4 + match_len(src, len, s + 4, o2 + 4);
            tb[hash6(cv)] = (entry){s + cur, (uint32_t)cv};
            if (add_seq(e, 0, (uint32_t)(l2 - 3), 1)) return -1;
            s += l2;
            next = s;
            int32_t x = off1;
            off1 = off2;
            off2 = x;
            if (s >= slimit) break;
            cv = ld64(src + s);
        }
    }
done:
    if ((size_t)next < len) add_lits(e, src + next, len - (size_t)next);
    return 0;
}

/* The double-fast match finder over one block (appends literals and sequences). */
static int dfast_block(kz_enc *e, const uint8_t *blk, size_t n) {
    entry *lt = e->ltab, *st = e->stab;
    const int32_t maxoff = e->window;
    rebase(e, lt, st);
    int32_t s = hist_add(e, blk, n);
    if (n < 16) {
        add_lits(e, blk, n);
        return 0;
    }
    const uint8_t *src = e->hist;
    const size_t len = e->histlen;
    const int32_t slimit = (int32_t)len - 10;
    const int32_t cur = e->cur;
    int32_t next = s;
    uint64_t cv = ld64(src + s);
    int32_t off1 = 0, off2 = 0; /* never read before three sequences set them */

    for (;;) {
        int32_t t;
        int rep_ok = e->nseq > 2;
        for (;;) {
            uint32_t hl = hash8(cv), hs = hash5(cv);
            entry cl = lt[hl], cs = st[hs];
            int32_t repi = s - off1 + 1;
            lt[hl] = st[hs] = (entry){s + cur, (uint32_t)cv};
            if (rep_ok && repi >= 0 && ld32(src + repi) == (uint32_t)(cv >> 8)) {
                int32_t l = 4 + match_len(src, len, s + 5, repi + 4);
                uint32_t ml = (uint32_t)(l - 3);
                int32_t start = s + 1, lim = next + 1;
                int32_t tmin = s - maxoff;
                if (tmin < 0) tmin = 0;
                while (repi > tmin && start > lim && src[repi - 1] == src[start - 1] &&
                       ml < MAX_MATCH - 3 - 1) {
                    repi--;
                    start--;
                    ml++;
                }
                uint32_t ll = 0;
                if (start != next) {
                    add_lits(e, src + next, (size_t)(start - next));
                    ll = (uint32_t)(start - next);
                }
                if (add_seq(e, ll, ml, 1)) return -1;
                s += l + 1;
                next = s;
                if (s >= slimit) goto done;
                cv = ld64(src + s);
                continue;
            }
            int32_t dl = s - (cl.off - cur), ds = s - (cs.off - cur);
            if (dl < maxoff && (uint32_t)cv == cl.val) {
                t = cl.off - cur;
                break;
            }
            if (ds < maxoff && (uint32_t)cv == cs.val) {
                uint64_t cv1 = ld64(src + s + 1);
                uint32_t h1 = hash8(cv1);
                entry c1 = lt[h1];
                int32_t d1 = s - (c1.off - cur) + 1;
                lt[h1] = (entry){s + 1 + cur, (uint32_t)cv1};
                if (d1 < maxoff && (uint32_t)cv1 == c1.val) {
                    t = c1.off - cur;
                    s += 1;
                    break;
                }
                t = cs.off - cur;
                break;
            }
            s += 1 + ((s - next) >> 7);
            if (s >= slimit) goto done;
            cv = ld64(src + s);
        }
        off2 = off1;
        off1 = s - t;
        int32_t l = match_len(src, len, s + 4, t + 4) + 4;
        int32_t tmin = s - maxoff;
        if (tmin < 0) tmin = 0;
        while (t > tmin && s > next && src[t - 1] == src[s - 1] && l < MAX_MATCH) {
            s--;
            t--;
            l++;
        }
        uint32_t ll = (uint32_t)(s - next);
        if (ll) add_lits(e, src + next, ll);
        if (add_seq(e, ll, (uint32_t)(l - 3), (uint32_t)(s - t) + 3)) return -1;
        s += l;
        next = s;
        if (s >= slimit) break;
        {
            int32_t i0 = s - l + 1, i1 = s - 2;
            uint64_t v0 = ld64(src + i0), v1 = ld64(src + i1);
            lt[hash8(v0)] = (entry){i0 + cur, (uint32_t)v0};
            lt[hash8(v1)] = (entry){i1 + cur, (uint32_t)v1};
            v0 >>= 8;
            v1 >>= 8;
            st[hash5(v0)] = (entry){i0 + 1 + cur, (uint32_t)v0};
            st[hash5(v1)] = (entry){i1 + 1 + cur, (uint32_t)v1};
        }
        cv = ld64(src + s);
        if (!rep_ok) continue;
        for (;;) {
            int32_t o2 = s - off2;
            if (o2 < 0 || ld32(src + o2) != (uint32_t)cv) break;
            int32_t l2 = 4 + match_len(src, len, s + 4, o2 + 4);
            entry en = {s + cur, (uint32_t)cv};
            lt[hash8(cv)] = en;
            st[hash5(cv)] = en;
            if (add_seq(e, 0, (uint32_t)(l2 - 3), 1)) return -1;
            s += l2;
            next = s;
            int32_t x = off1;
            off1 = off2;
            off2 = x;
            if (s >= slimit) goto done;
            cv = ld64(src + s);
        }
    }
done:
    if ((size_t)next < len) add_lits(e, src + next, len - (size_t)next);
    return 0;
}

static void block_header(kz_buf *b, int last, int type, uint32_t size) {
    uint32_t h = (uint32_t)(last ? 1 : 0) | ((uint32_t)type << 1) | (size << 3);
    uint8_t x[3] = {(uint8_t)h, (uint8_t)(h >> 8), (uint8_t)(h >> 16)};
    put(b, x, 3);
}

static void raw_block(kz_buf *b, int last, const uint8_t *p, size_t n) {
    block_header(b, last, 0, (uint32_t)n);
    put(b, p, n);
}

static inline unsigned bitlen(uint32_t v) { return v ? 32u - (unsigned)__builtin_clz(v) : 0; }

/* Literals section header for a raw or RLE section of n bytes. */
static void lit_header_single(kz_buf *b, int type, uint32_t n) {
    unsigned nb = bitlen(n);
    if (nb < 5) {
        put1(b, (uint8_t)(type | (n << 3)));
    } else if (nb < 12) {
        uint32_t h = (uint32_t)type | (1u << 2) | (n << 4);
        uint8_t x[2] = {(uint8_t)h, (uint8_t)(h >> 8)};
        put(b, x, 2);
    } else {
        uint32_t h = (uint32_t)type | (3u << 2) | (n << 4);
        uint8_t x[3] = {(uint8_t)h, (uint8_t)(h >> 8), (uint8_t)(h >> 16)};
        put(b, x, 3);
    }
}

static void lit_header_comp(kz_buf *b, int type, uint32_t comp, uint32_t n, int single) {
    unsigned cb = bitlen(comp), ib = bitlen(n);
    uint64_t h = (uint64_t)type;
    int size;
    if (cb <= 10 && ib <= 10) {
        if (!single) h |= 1u << 2;
        h |= ((uint64_t)n << 4) | ((uint64_t)comp << 14);
        size = 3;
    } else if (cb <= 14 && ib <= 14) {
        h |= (2u << 2) | ((uint64_t)n << 4) | ((uint64_t)comp << 18);
        size = 4;
    } else {
        h |= (3u << 2) | ((uint64_t)n << 4) | ((uint64_t)comp << 22);
        size = 5;
    }
    uint8_t x[5];
    for (int i = 0; i < size; i++) x[i] = (uint8_t)(h >> (8 * i));
    put(b, x, (size_t)size);
}

/* A block that is only literals (or was not worth its sequences). */
static int lits_block(kz_enc *e, const uint8_t *lits, size_t n, int last) {
    kz_buf *b = &e->blk;
    b->len = 0;
    if (n < 32 || e->raw_lits) {
        raw_block(b, last, lits, n);
        return 0;
    }
    int r = H_RAW, reused = 0, single = 0;
    if (n >= 1024) {
        r = huf_compress(&e->huf, lits, n, 1, &e->tmp, &reused);
    } else if (n > 32) {
        single = 1;
        r = huf_compress(&e->huf, lits, n, 0, &e->tmp, &reused);
    }
    if (r < 0) return -1;
    if (r == H_RAW) {
        raw_block(b, last, lits, n);
        return 0;
    }
    if (r == H_RLE) {
        block_header(b, last, 1, (uint32_t)n);
        put1(b, lits[0]);
        return 0;
    }
    e->huf.allow = 1;
    kz_buf hdr = {0};
    lit_header_comp(&hdr, reused ? 3 : 2, (uint32_t)e->tmp.len, (uint32_t)n, single);
    if (hdr.oom) return -1;
    block_header(b, last, 2, (uint32_t)(e->tmp.len + hdr.len + 1));
    put(b, hdr.p, hdr.len);
    kz_buf_free(&hdr);
    put(b, e->tmp.p, e->tmp.len);
    put1(b, 0);
    return b->oom ? -1 : 0;
}

static inline uint8_t ll_code(uint32_t v) {
    static const uint8_t T[64] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12,
                                  13, 14, 15, 16, 16, 17, 17, 18, 18, 19, 19, 20, 20,
                                  20, 20, 21, 21, 21, 21, 22, 22, 22, 22, 22, 22, 22,
                                  22, 23, 23, 23, 23, 23, 23, 23, 23, 24, 24, 24, 24,
                                  24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24, 24};
    return v <= 63 ? T[v] : (uint8_t)(hibit(v) + 19);
}

static inline uint8_t ml_code(uint32_t v) {
    if (v <= 31) return (uint8_t)v;
    if (v <= 127) {
        static const uint8_t T[96] = {
            32, 32, 33, 33, 34, 34, 35, 35, 36, 36, 36, 36, 37, 37, 37, 37, 38, 38, 38, 38,
            38, 38, 38, 38, 39, 39, 39, 39, 39, 39, 39, 39, 40, 40, 40, 40, 40, 40, 40, 40,
            40, 40, 40, 40, 40, 40, 40, 40, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41, 41,
            41, 41, 41, 41, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42,
            42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42, 42};
        return T[v - 32];
    }
    return (uint8_t)(hibit(v) + 36);
}

/* Pick predefined, repeat or new table; returns the table and sets *mode. */
static fse_t *choose(fse_t *cur, fse_t *prev, fse_t *pre, int *mode) {
    const uint32_t *hist = cur->count;
    int n = cur->symlen;
    uint32_t nsize = approx_size(cur, hist, n) + max_header_bits(cur);
    uint32_t psize = approx_size(pre, hist, n);
    uint32_t rsize = approx_size(prev, hist, n);
    nsize = nsize + ((nsize + 2 * 8 * 16) >> 4);
    if (psize <= rsize && psize <= nsize) {
        *mode = 0;
        return pre;
    }
    if (rsize <= nsize) {
        *mode = 3;
        return prev;
    }
    *mode = 2;
    return cur;
}

typedef struct {
    const uint16_t *table;
    uint16_t state;
} cstate;

static inline void cs_init(cstate *c, const fse_t *f, const tt_ent *t) {
    c->table = f->state;
    if (f->tlog == 0 && f->rle) {
        c->state = 0;
        return;
    }
    uint32_t nb = (t->dnb + (1u << 15)) >> 16;
    int32_t im = (int32_t)((nb << 16) - t->dnb);
    c->state = f->state[(im >> nb) + t->dfs];
}

static inline void cs_enc(cstate *c, bitw *w, const tt_ent *t) {
    uint32_t nb = ((uint32_t)c->state + t->dnb) >> 16;
    int32_t d = (int32_t)(c->state >> (nb & 15)) + t->dfs;
    bw_put(w, c->state, nb);
    c->state = c->table[d];
}

/* Code the block's literals and sequences; 1 when it must be stored raw instead. */
static int seq_block(kz_enc *e, const uint8_t *org, size_t size, int last) {
    size_t nlit = e->nlits;
    long saved = (long)size - (long)nlit - (long)(size >> 5);
    if (saved < 16) return lits_block(e, org, size, last);
    kz_buf *b = &e->blk;
    b->len = 0;
    block_header(b, last, 2, 0);
    int r = H_RAW, reused = 0, single = 0;
    if (nlit >= 1024) {
        r = huf_compress(&e->huf, e->lits, nlit, 1, &e->tmp, &reused);
    } else if (nlit > 32) {
        single = 1;
        r = huf_compress(&e->huf, e->lits, nlit, 0, &e->tmp, &reused);
    }
    if (r < 0) return -1;
    if (r == H_RAW) {
        lit_header_single(b, 0, (uint32_t)nlit);
        put(b, e->lits, nlit);
    } else if (r == H_RLE) {
        lit_header_single(b, 1, (uint32_t)nlit);
        put1(b, e->lits[0]);
    } else {
        lit_header_comp(b, reused ? 3 : 2, (uint32_t)e->tmp.len, (uint32_t)nlit, single);
        put(b, e->tmp.p, e->tmp.len);
        e->huf.allow = 1;
    }
    size_t ns = e->nseq;
    if (ns < 128) {
        put1(b, (uint8_t)ns);
    } else if (ns < 0x7f00) {
        uint8_t x[2] = {(uint8_t)(128 + (ns >> 8)), (uint8_t)ns};
        put(b, x, 2);
    } else {
        size_t m = ns - 0x7f00;
        uint8_t x[3] = {255, (uint8_t)m, (uint8_t)(m >> 8)};
        put(b, x, 3);
    }
    /* codes and histograms */
    fse_t *ll = e->enc[0], *of = e->enc[1], *ml = e->enc[2];
    memset(ll->count, 0, sizeof(ll->count));
    memset(of->count, 0, sizeof(of->count));
    memset(ml->count, 0, sizeof(ml->count));
    uint8_t llmax = 0, ofmax = 0, mlmax = 0;
    for (size_t i = 0; i < ns; i++) {
        seq_t *q = &e->seqs[i];
        q->llc = ll_code(q->ll);
        q->ofc = (uint8_t)hibit(q->of);
        q->mlc = ml_code(q->ml);
        ll->count[q->llc]++;
        of->count[q->ofc]++;
        ml->count[q->mlc]++;
        if (q->llc > llmax) llmax = q->llc;
        if (q->ofc > ofmax) ofmax = q->ofc;
        if (q->mlc > mlmax) mlmax = q->mlc;
    }
    fse_t *cur[3] = {ll, of, ml};
    uint8_t mx[3] = {llmax, ofmax, mlmax};
    for (int k = 0; k < 3; k++) {
        uint32_t m = 0;
        for (int i = 0; i <= mx[k]; i++)
            if (cur[k]->count[i] > m) m = cur[k]->count[i];
        cur[k]->maxcount = (int)m;
        cur[k]->symlen = mx[k] + 1;
    }
    for (int k = 0; k < 3; k++)
        if (fse_prepare(cur[k], (uint32_t)ns)) return -1;
    fse_t *use[3];
    int modes[3];
    const uint8_t *tr[3] = {LL_BITS, NULL, ML_BITS};
    uint8_t first[3] = {e->seqs[0].llc, e->seqs[0].ofc, e->seqs[0].mlc};
    for (int k = 0; k < 3; k++) {
        if (cur[k]->rle) {
            fse_t *f = cur[k];
            f->tlog = 0;
            f->tt[first[k]] = (tt_ent){0, 0, 0};
            f->state[0] = 0;
            f->rleval = first[k];
            use[k] = f;
            modes[k] = 1;
        } else {
            use[k] = choose(cur[k], e->prv[k], &PREDEF[k], &modes[k]);
        }
    }
    put1(b, (uint8_t)((modes[0] << 6) | (modes[1] << 4) | (modes[2] << 2)));
    for (int k = 0; k < 3; k++) {
        fse_t *f = use[k];
        if (f->rle) put1(b, f->rleval);
        else if (!f->predef && !f->reused && write_ncount(b, f->norm, f->symlen, f->tlog))
            return -1;
    }
    for (int k = 0; k < 3; k++) set_bits(use[k], tr[k]);
    /* sequences, last to first */
    bitw w = {0, 0, b};
    const tt_ent *llt = use[0]->tt, *oft = use[1]->tt, *mlt = use[2]->tt;
    cstate cll, cof, cml;
    seq_t *q = &e->seqs[ns - 1];
    cs_init(&cll, use[0], &llt[q->llc]);
    cs_init(&cof, use[1], &oft[q->ofc]);
    cs_init(&cml, use[2], &mlt[q->mlc]);
    bw_put(&w, q->ll, llt[q->llc].ob);
    bw_put(&w, q->ml, mlt[q->mlc].ob);
    bw_put(&w, q->of, oft[q->ofc].ob);
    for (size_t i = ns - 1; i-- > 0;) {
        q = &e->seqs[i];
        cs_enc(&cof, &w, &oft[q->ofc]);
        cs_enc(&cml, &w, &mlt[q->mlc]);
        cs_enc(&cll, &w, &llt[q->llc]);
        bw_put(&w, q->ll, llt[q->llc].ob);
        bw_put(&w, q->ml, mlt[q->mlc].ob);
        bw_put(&w, q->of, oft[q->ofc].ob);
    }
    bw_put(&w, cml.state, use[2]->tlog);
    bw_put(&w, cof.state, use[1]->tlog);
    bw_put(&w, cll.state, use[0]->tlog);
    bw_close(&w);
    if (b->oom) return -1;
    if (b->len - 3 >= size) {
        e->huf.allow = 0;
        return 1;
    }
    uint32_t h = (uint32_t)(last ? 1 : 0) | (2u << 1) | ((uint32_t)(b->len - 3) << 3);
    b->p[0] = (uint8_t)h;
    b->p[1] = (uint8_t)(h >> 8);
    b->p[2] = (uint8_t)(h >> 16);
    /* remember the tables used: a new one becomes the repeat candidate */
    for (int k = 0; k < 3; k++) {
        if (use[k] == e->enc[k]) {
            fse_t *x = e->enc[k];
            e->enc[k] = e->prv[k];
            e->prv[k] = x;
            e->enc[k]->reused = 0;
            e->prv[k]->reused = 1;
        } else if (use[k] != e->prv[k]) {
            e->prv[k]->symlen = 0;
        }
    }
    return 0;
}

/* Encode one block of the stream into e->blk. */
static int encode_block(kz_enc *e, const uint8_t *src, size_t n, int last) {
    e->nlits = 0;
    e->nseq = 0;
    if ((e->level == KZ_LEVEL_FASTEST ? fast_block(e, src, n) : dfast_block(e, src, n))) return -1;
    int r;
    if (e->nlits == n && n == e->block) r = 1;
    else if (e->nseq == 0) r = lits_block(e, e->lits, e->nlits, last);
    else r = seq_block(e, src, n, last);
    if (r < 0) return -1;
    if (r == 1) {
        e->blk.len = 0;
        raw_block(&e->blk, last, src, n);
    }
    return e->blk.oom ? -1 : 0;
}

static int emit_block(kz_enc *e, const uint8_t *src, size_t n, int last, kz_buf *out) {
    if (!e->header) {
        static const uint8_t hdr[6] = {0x28, 0xb5, 0x2f, 0xfd, 0x04, 0};
        uint8_t h[6];
        memcpy(h, hdr, 6);
        h[5] = (uint8_t)((bitlen((uint32_t)e->window - 1) - 10) << 3);
        put(out, h, 6);
        e->header = 1;
    }
    if (encode_block(e, src, n, last)) return -1;
    put(out, e->blk.p, e->blk.len);
    return out->oom ? -1 : 0;
}

kz_enc *kz_new(int level, size_t prefix) {
    if ((level != KZ_LEVEL_DEFAULT && level != KZ_LEVEL_FASTEST) || prefix == 0 ||
        prefix > BLOCK_MAX / 2)
        return NULL;
    predef_init();
    kz_enc *e = calloc(1, sizeof(*e));
    if (!e) return NULL;
    e->level = level;
    e->prefix = prefix;
    int fastest = level == KZ_LEVEL_FASTEST;
    e->window = fastest ? WINDOW_DEFAULT / 2 : WINDOW_DEFAULT;
    e->block = fastest ? BLOCK_MAX / 2 : BLOCK_MAX;
    e->raw_lits = fastest;
    e->histcap = 2 * (size_t)e->window;
    e->hist = malloc(e->histcap);
    e->ltab = calloc((size_t)1 << LONG_BITS, sizeof(entry));
    e->stab = calloc((size_t)1 << SHORT_BITS, sizeof(entry));
    e->lits = malloc(BLOCK_MAX + 16);
    e->seqcap = 4096;
    e->seqs = malloc(e->seqcap * sizeof(seq_t));
    e->fill = malloc(BLOCK_MAX);
    if (!e->hist || !e->ltab || !e->stab || !e->lits || !e->seqs || !e->fill) {
        kz_free(e);
        return NULL;
    }
    e->cur = e->window; /* everything in the empty tables is out of reach */
    for (int k = 0; k < 3; k++) {
        e->enc[k] = &e->coders[2 * k];
        e->prv[k] = &e->coders[2 * k + 1];
    }
    xxh_init(&e->crc);
    return e;
}

void kz_free(kz_enc *e) {
    if (!e) return;
    free(e->hist);
    free(e->ltab);
    free(e->stab);
    free(e->lits);
    free(e->seqs);
    free(e->fill);
    kz_buf_free(&e->blk);
    kz_buf_free(&e->tmp);
    free(e);
}

int kz_feed(kz_enc *e, const uint8_t *p, size_t n, kz_buf *out) {
    if (n == 0) return 0;
    xxh_update(&e->crc, p, n);
    while (n > 0) {
        /* the first block is the producer's prefix; the others are full blocks */
        size_t want = e->fed < e->prefix ? e->prefix : e->block;
        size_t take = want - e->nfill;
        if (take > n) take = n;
        memcpy(e->fill + e->nfill, p, take);
        e->nfill += take;
        e->fed += take;
        p += take;
        n -= take;
        if (e->nfill == want) {
            if (emit_block(e, e->fill, e->nfill, 0, out)) return -1;
            e->nfill = 0;
        }
    }
    return 0;
}

int kz_end(kz_enc *e, kz_buf *out) {
    if (e->fed == 0) return 0; /* the Go writer writes nothing for no input */
    if (e->fed < e->prefix) {
        /* ReadFrom flushed the short prefix before finding the end */
        if (emit_block(e, e->fill, e->nfill, 0, out)) return -1;
        e->nfill = 0;
    }
    if (e->nfill == 0) {
        block_header(out, 1, 0, 0);
    } else {
        if (emit_block(e, e->fill, e->nfill, 1, out)) return -1;
        e->nfill = 0;
    }
    uint64_t d = xxh_digest(&e->crc);
    uint8_t c[4] = {(uint8_t)d, (uint8_t)(d >> 8), (uint8_t)(d >> 16), (uint8_t)(d >> 24)};
    put(out, c, 4);
    return out->oom ? -1 : 0;
}
