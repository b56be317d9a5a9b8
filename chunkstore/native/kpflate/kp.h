/* Internal interface of the klauspost-compatible deflate encoder (chunkstore.native._kpflate).
 *
 * The encoder reproduces, bit for bit, the raw deflate streams that github.com/klauspost/compress
 * v1.15.12 (package flate) writes, alone or under github.com/klauspost/pgzip v1.2.5. It is an
 * independent C implementation of the same decisions: the per-level match finders, the token
 * histograms, klauspost's size estimates for stored / fixed / dynamic / table-reusing blocks, its
 * Huffman length limiting and its flush and end-of-stream markers.
 *
 *   out.c     growable output buffer, bit packing, Huffman code construction
 *   blocks.c  block writers (stored, fixed, dynamic with table reuse, literal-only)
 *   fast.c    match finders of levels 1..6 (hash tables over a sliding history)
 *   lazy.c    levels 7..9 (hash chains with lazy evaluation)
 *   stream.c  one compression stream: input windows, flush, close, reset with a dictionary
 */
#ifndef CHUNKSTORE_KP_H
#define CHUNKSTORE_KP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define KP_WSIZE 32768       /* deflate window: the farthest back a match may reach */
#define KP_CHUNK 65535       /* input chunk of levels 0..6, and the largest stored block */
#define KP_NLIT 286          /* literal/length symbols */
#define KP_NDIST 30          /* distance symbols */
#define KP_EOB 256
#define KP_TOKCAP 65537      /* a chunk of literals plus the end-of-block marker */
#define KP_LAZY_FLUSH 32768  /* levels 7..9 emit a block after this many tokens */

/* ---- little-endian loads ---- */
static inline uint64_t kp_ld64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}
static inline uint32_t kp_ld32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

/* Length of the common prefix of a[0..n) and b (b is readable for at least n bytes). */
static inline int32_t kp_common(const uint8_t *a, const uint8_t *b, int32_t n) {
    int32_t k = 0;
    while (n - k >= 8) {
        uint64_t x = kp_ld64(a + k) ^ kp_ld64(b + k);
        if (x) return k + (int32_t)(__builtin_ctzll(x) >> 3);
        k += 8;
    }
    while (k < n && a[k] == b[k]) k++;
    return k;
}

/* ---- output buffer ---- */
typedef struct {
    uint8_t *p;
    size_t len, cap;
    int oom;
} kp_buf;

int kp_buf_grow(kp_buf *b, size_t extra);
void kp_buf_free(kp_buf *b);

/* ---- tokens ----
 * literal: the byte (0..255); end of block: 256;
 * match:   bit 31 | distance symbol << 23 | (length - 3) << 15 | (distance - 1). */
#define KP_MATCH 0x80000000u

typedef struct {
    uint32_t n;
    uint16_t lit[256];
    uint16_t lsym[32]; /* [0]: end-of-block markers, [1 + c]: length symbol 257 + c */
    uint16_t dsym[32];
    uint32_t *v;       /* KP_TOKCAP entries */
} kp_tokens;

extern uint8_t kp_lcode[256];    /* length - 3 -> length symbol - 257 */
extern const uint8_t kp_lext[32];
extern const uint8_t kp_dext[32];
extern uint8_t kp_dcode_lo[256]; /* distance - 1 (< 256) -> distance symbol */
void kp_tables_init(void);

/* The distance symbol of distance-1 value x, computed the way klauspost does: the high path looks
 * at 8 bits of x >> 7 only (so x == 32768 maps to symbol 14, which the level 9 cost model sees). */
static inline uint32_t kp_dcode(uint32_t x) {
    return x < 256 ? kp_dcode_lo[x] : (uint32_t)kp_dcode_lo[(x >> 7) & 255] + 14;
}

static inline void kp_tok_clear(kp_tokens *t) {
    if (t->n == 0) return;
    t->n = 0;
    memset(t->lit, 0, sizeof t->lit);
    memset(t->lsym, 0, sizeof t->lsym);
    memset(t->dsym, 0, sizeof t->dsym);
}
static inline void kp_tok_lit(kp_tokens *t, uint8_t c) {
    t->v[t->n++] = c;
    t->lit[c]++;
}
static inline void kp_tok_eob(kp_tokens *t) {
    t->v[t->n++] = KP_EOB;
    t->lsym[0]++;
}
/* One match token: len3 = length - 3 (0..255), dist1 = distance - 1 (0..32767). */
static inline void kp_tok_match(kp_tokens *t, uint32_t len3, uint32_t dist1) {
    uint32_t dc = kp_dcode(dist1), lc = kp_lcode[len3 & 255];
    t->lsym[lc + 1]++;
    t->dsym[dc & 31]++;
    t->v[t->n++] = KP_MATCH | (dc << 23) | (len3 << 15) | dist1;
}
/* A match of any length >= 4, cut into deflate-sized pieces the way klauspost cuts it (a piece of
 * 255 is taken instead of 258 when that would leave fewer than 3 bytes). */
static inline void kp_tok_long(kp_tokens *t, int32_t len, uint32_t dist1) {
    while (len > 0) {
        int32_t piece = len;
        if (piece > 258) piece = piece > 261 ? 258 : 255;
        len -= piece;
        kp_tok_match(t, (uint32_t)(piece - 3), dist1);
    }
}

/* ---- Huffman codes ---- */
typedef struct {
    uint16_t code[KP_NLIT + 2]; /* bit-reversed, ready to be packed LSB first */
    uint8_t len[KP_NLIT + 2];
} kp_code;

/* Code lengths (limited to maxbits) and canonical codes for freq[0..n), as klauspost builds them. */
void kp_code_build(kp_code *c, const uint16_t *freq, int n, int maxbits);
extern kp_code kp_fixed_lit, kp_fixed_dist;

/* ---- bit writer and block writers ---- */
typedef struct {
    kp_buf *out;
    uint64_t bits;
    unsigned nbits;
    int open_hdr;       /* header bits of a dynamic block left open for reuse; 0 = none open */
    int open_litonly;   /* the open block's table was made for literals only */
    unsigned penalty;   /* log2 divisor of the extra cost charged to a fresh table */
    kp_code *lit, *spare;
    kp_code lit_a, lit_b, dist, cl;
    uint16_t lfreq[KP_NLIT + 4];
    uint16_t dfreq[32];
    uint16_t clfreq[19];
    uint8_t clseq[KP_NLIT + KP_NDIST + 2];
} kp_bw;

void kp_bw_reset(kp_bw *w, kp_buf *out);
void kp_bw_spill(kp_bw *w);
void kp_bw_align(kp_bw *w);
void kp_bw_stored_header(kp_bw *w, size_t len, int eof);
void kp_bw_raw(kp_bw *w, const uint8_t *p, size_t n);
void kp_bw_dynamic(kp_bw *w, kp_tokens *t, int eof, const uint8_t *in, size_t inlen, int have_in,
                   int sync);
void kp_bw_literals(kp_bw *w, int eof, const uint8_t *in, size_t n, int sync);

static inline void kp_bw_put(kp_bw *w, uint64_t v, unsigned n) {
    w->bits |= v << w->nbits;
    w->nbits += n;
    if (w->nbits >= 48) kp_bw_spill(w);
}

/* ---- levels 1..6 ---- */
typedef struct {
    int32_t cur, prev;
} kp_pair;

typedef struct {
    int level;
    int32_t cur;   /* table values are positions + cur */
    int32_t hlen;  /* bytes of history in hist */
    uint8_t *hist; /* KP_HIST bytes + padding */
    int32_t *t1;   /* single-entry table */
    int32_t *t2;   /* second single-entry table (level 4) */
    kp_pair *tp;   /* two-entry table (levels 3, 5, 6) */
} kp_fast;

kp_fast *kp_fast_new(int level);
void kp_fast_free(kp_fast *e);
void kp_fast_reset(kp_fast *e);
void kp_fast_encode(kp_fast *e, kp_tokens *t, const uint8_t *src, int32_t n);

/* ---- one stream ---- */
typedef struct kp_lazy kp_lazy;

typedef struct {
    int level;         /* -2, 0, 1..9 (-1 is 5) */
    int sync;
    kp_bw bw;
    kp_tokens tok;
    uint8_t *win;      /* input window */
    size_t wcap, wend;
    kp_fast *fast;
    kp_lazy *lazy;
} kp_stream;

kp_stream *kp_stream_new(int level); /* NULL on bad level or no memory */
void kp_stream_free(kp_stream *s);
void kp_stream_reset(kp_stream *s, kp_buf *out, const uint8_t *dict, size_t dlen);
void kp_stream_write(kp_stream *s, const uint8_t *p, size_t n);
void kp_stream_flush(kp_stream *s);
void kp_stream_close(kp_stream *s);

/* lazy.c, used by stream.c */
kp_lazy *kp_lazy_new(int level);
void kp_lazy_free(kp_lazy *z);
void kp_lazy_reset(kp_lazy *z);
void kp_lazy_dict(kp_lazy *z, const uint8_t *d, size_t n);
size_t kp_lazy_fill(kp_lazy *z, const uint8_t *p, size_t n);
int kp_lazy_full(const kp_lazy *z);
void kp_lazy_step(kp_lazy *z, kp_stream *s);

#endif
