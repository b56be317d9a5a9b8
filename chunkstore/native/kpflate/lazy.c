/* Levels 7..9: hash chains over a 64 KiB window with one step of lazy evaluation.
 *
 * Positions in the chain tables are stored plus `base` (0 means empty); when the window slides
 * `base` grows instead of the tables being rewritten, until it would get too large. Level 9 ranks
 * candidate matches by an estimated bit gain, pricing the covered literals with a Huffman code made
 * from the byte histogram of the window's unprocessed part (16-bit counters, wrapping as they do in
 * klauspost). Runs of literals make the search skip ahead after `chain` misses.
 */
#include <stdlib.h>

#include "kp.h"

#define WIN (2 * KP_WSIZE)
#define HBITS 17
#define MINM 4
#define MAXM 258
#define LOOK (MINM + MAXM) /* lookahead kept back unless flushing */
#ifndef KP_TEST_BASE_LIMIT /* tests lower it to exercise the rebase */
#define BASE_LIMIT (1 << 28)
#else
#define BASE_LIMIT KP_TEST_BASE_LIMIT
#endif

struct kp_lazy {
    int lazy, nice, chain;
    uint8_t *w;         /* WIN bytes + padding */
    int32_t end;        /* bytes in w */
    int32_t pos;        /* next byte to process */
    int32_t block_from; /* where the pending block's input starts (INT32_MAX: slid away) */
    int pending;        /* w[pos - 1] is deferred: a literal unless a match starts there */
    int32_t mlen, mdist; /* best match starting at pos - 1 */
    int32_t insert_end; /* last position that can be hashed, plus one */
    int32_t head_pos;   /* chain head for pos (stored form) */
    int32_t base;
    uint16_t misses;    /* literals since the last match (wraps like klauspost's) */
    uint8_t est[256];   /* level 9: bits per literal byte */
    uint32_t *head;     /* 1 << HBITS */
    uint32_t *prev;     /* KP_WSIZE */
};

kp_lazy *kp_lazy_new(int level) {
    static const int params[3][3] = {{12, 16, 24}, {30, 40, 64}, {258, 258, 1024}};
    kp_lazy *z = calloc(1, sizeof *z);
    if (!z) return NULL;
    z->lazy = params[level - 7][0];
    z->nice = params[level - 7][1];
    z->chain = params[level - 7][2];
    z->w = calloc(WIN + 16, 1);
    z->head = calloc((size_t)1 << HBITS, sizeof(uint32_t));
    z->prev = calloc(KP_WSIZE, sizeof(uint32_t));
    if (!z->w || !z->head || !z->prev) {
        kp_lazy_free(z);
        return NULL;
    }
    kp_lazy_reset(z);
    return z;
}

void kp_lazy_free(kp_lazy *z) {
    if (!z) return;
    free(z->w);
    free(z->head);
    free(z->prev);
    free(z);
}

void kp_lazy_reset(kp_lazy *z) {
    memset(z->head, 0, sizeof(uint32_t) << HBITS);
    memset(z->prev, 0, sizeof(uint32_t) * KP_WSIZE);
    z->head_pos = -1;
    z->base = 1;
    z->pos = z->end = 0;
    z->block_from = 0;
    z->pending = 0;
    z->mlen = MINM - 1;
    z->mdist = 0;
    z->misses = 0;
    z->insert_end = 0;
}

static inline uint32_t hash4(const uint8_t *p) {
    return (kp_ld32(p) * 2654435761u) >> (32 - HBITS);
}

static inline void insert(kp_lazy *z, int32_t i) {
    uint32_t h = hash4(z->w + i);
    z->prev[i & (KP_WSIZE - 1)] = z->head[h];
    z->head[h] = (uint32_t)(i + z->base);
}

/* Preset dictionary: its last 32 KiB become the window, every position hashed. The pending block
 * is taken to start at 0, dictionary included, as klauspost has it (it only matters for the stored
 * size estimate of the first block). */
void kp_lazy_dict(kp_lazy *z, const uint8_t *d, size_t n) {
    if (n > KP_WSIZE) {
        d += n - KP_WSIZE;
        n = KP_WSIZE;
    }
    memcpy(z->w + z->end, d, n);
    for (int32_t i = 0; i + MINM <= (int32_t)n; i++) insert(z, i);
    z->end += (int32_t)n;
    z->pos = (int32_t)n;
}

int kp_lazy_full(const kp_lazy *z) { return z->end == WIN; }

size_t kp_lazy_fill(kp_lazy *z, const uint8_t *p, size_t n) {
    if (z->pos >= WIN - LOOK) { /* slide the window down by 32 KiB */
        memcpy(z->w, z->w + KP_WSIZE, KP_WSIZE);
        z->pos -= KP_WSIZE;
        z->end -= KP_WSIZE;
        z->block_from = z->block_from >= KP_WSIZE ? z->block_from - KP_WSIZE : INT32_MAX;
        z->base += KP_WSIZE;
        if (z->base > BASE_LIMIT) {
            int32_t delta = z->base - 1;
            z->base -= delta;
            z->head_pos -= delta;
            for (int32_t i = 0; i < KP_WSIZE; i++)
                z->prev[i] = (int32_t)z->prev[i] > delta ? z->prev[i] - (uint32_t)delta : 0;
            for (int32_t i = 0; i < (1 << HBITS); i++)
                z->head[i] = (int32_t)z->head[i] > delta ? z->head[i] - (uint32_t)delta : 0;
        }
    }
    size_t room = (size_t)(WIN - z->end);
    if (n > room) n = room;
    memcpy(z->w + z->end, p, n);
    z->end += (int32_t)n;
    return n;
}

/* ------------------------------------------------------------------ match search */

static int gain_of(const kp_lazy *z, const uint8_t *p, int32_t n, int32_t dist) {
    int bits = 0;
    for (int32_t k = 0; k < n; k++) bits += z->est[p[k]];
    return bits - kp_dext[kp_dcode((uint32_t)dist) & 31] - 6 - kp_lext[kp_lcode[(n - 3) & 255]];
}

/* Best match for pos among at most `chain` candidates of its hash chain, starting at cand. */
static int find(const kp_lazy *z, int32_t pos, int32_t cand, int32_t look, int32_t *len_out,
                int32_t *dist_out) {
    const uint8_t *w = z->w;
    int32_t most = look < MAXM ? look : MAXM;
    int32_t nice = z->nice < most ? z->nice : most;
    int32_t best = MINM - 1, dist = 0, gain = 0;
    int found = 0;
    int32_t lowest = pos - KP_WSIZE > 0 ? pos - KP_WSIZE : 0;
    uint8_t want = w[pos + best];
    int by_gain = z->chain >= 100;
    for (int32_t i = cand, tries = z->chain; tries > 0; tries--) {
        if (w[i + best] == want) {
            int32_t n = kp_common(w + i, w + pos, most);
            if (n > best) {
                int take = 1;
                if (by_gain) {
                    int g = gain_of(z, w + pos, n, pos - i);
                    take = g > gain;
                    if (take) gain = g;
                }
                if (take) {
                    best = n;
                    dist = pos - i;
                    found = 1;
                    if (n >= nice) break;
                    want = w[pos + n];
                }
            }
        }
        if (i <= lowest) break;
        i = (int32_t)z->prev[i & (KP_WSIZE - 1)] - z->base;
        if (i < lowest) break;
    }
    *len_out = best;
    *dist_out = dist;
    return found;
}

/* ------------------------------------------------------------------ block output */

static void emit_block(kp_lazy *z, kp_stream *s) {
    if (z->pos > 0) {
        int have = z->block_from <= z->pos;
        const uint8_t *in = have ? z->w + z->block_from : NULL;
        size_t n = have ? (size_t)(z->pos - z->block_from) : 0;
        z->block_from = z->pos;
        kp_bw_dynamic(&s->bw, &s->tok, 0, in, n, have, s->sync);
    }
    kp_tok_clear(&s->tok);
}

static inline void add_lit(kp_lazy *z, kp_stream *s, uint8_t c) {
    kp_tok_lit(&s->tok, c);
    if (s->tok.n == KP_LAZY_FLUSH) emit_block(z, s);
}

void kp_lazy_step(kp_lazy *z, kp_stream *s) {
    if (z->end - z->pos < LOOK && !s->sync) return;
    if (z->end != z->pos && z->chain > 100) {
        uint16_t hist[256] = {0};
        for (int32_t i = z->pos; i < z->end; i++) hist[z->w[i]]++;
        kp_code c;
        kp_code_build(&c, hist, 256, 15);
        memcpy(z->est, c.len, 256);
    }
    uint8_t *w = z->w;
    z->insert_end = z->end - (MINM - 1);
    for (;;) {
        int32_t look = z->end - z->pos;
        if (look < LOOK) {
            if (!s->sync) return;
            if (look == 0) {
                if (z->pending) {
                    kp_tok_lit(&s->tok, w[z->pos - 1]);
                    z->pending = 0;
                }
                if (s->tok.n > 0) emit_block(z, s);
                return;
            }
        }
        if (z->pos < z->insert_end) {
            uint32_t h = hash4(w + z->pos);
            uint32_t old = z->head[h];
            z->head_pos = (int32_t)old;
            z->prev[z->pos & (KP_WSIZE - 1)] = old;
            z->head[h] = (uint32_t)(z->pos + z->base);
        }
        int32_t plen = z->mlen, pdist = z->mdist;
        z->mlen = MINM - 1;
        z->mdist = 0;
        int32_t lowest = z->pos - KP_WSIZE > 0 ? z->pos - KP_WSIZE : 0;
        if (z->head_pos - z->base >= lowest && look > plen && plen < z->lazy) {
            int32_t nl, nd;
            if (find(z, z->pos, z->head_pos - z->base, look, &nl, &nd)) {
                z->mlen = nl;
                z->mdist = nd;
            }
        }

        if (plen >= MINM && z->mlen <= plen) {
            /* the match at pos - 1 stands; first see whether one ending later is longer */
            int32_t at = z->pos - 1;
            if (at + plen + 2 < z->insert_end) {
                int32_t lim = (look > MAXM ? MAXM : look) + at;
                int32_t probe = at + plen - 2;
                int32_t c2 = (int32_t)z->head[hash4(w + probe)] - z->base - plen + 2;
                if (c2 > lowest) {
                    int32_t n = kp_common(w + at, w + c2, lim - at);
                    if (n > plen) {
                        plen = n;
                        pdist = at - c2;
                    }
                }
            }
            kp_tok_match(&s->tok, (uint32_t)(plen - 3), (uint32_t)(pdist - 1));
            int32_t next = z->pos + plen - 1;
            int32_t stop = (next < z->insert_end ? next : z->insert_end) + MINM - 1;
            int32_t from = z->pos + 1 < z->insert_end ? z->pos + 1 : z->insert_end;
            for (int32_t i = from; i + MINM <= stop; i++) insert(z, i);
            z->pos = next;
            z->pending = 0;
            z->mlen = MINM - 1;
            if (s->tok.n == KP_LAZY_FLUSH) emit_block(z, s);
            z->misses = 0;
            continue;
        }
        if (z->mlen >= MINM) z->misses = 0;
        if (!z->pending) {
            z->pos++;
            z->pending = 1;
            continue;
        }
        z->misses++;
        add_lit(z, s, w[z->pos - 1]);
        z->pos++;
        int32_t over = (int32_t)z->misses - z->chain;
        if (over > 0) { /* a long run without matches: take several literals unsearched */
            int32_t k = 1 + (over >> 6);
            for (int32_t j = 0; j < k; j++) {
                if (z->pos >= z->end - 1) break;
                add_lit(z, s, w[z->pos - 1]);
                if (z->pos < z->insert_end) {
                    uint32_t h = hash4(w + z->pos);
                    uint32_t old = z->head[h];
                    z->head_pos = (int32_t)old;
                    z->prev[z->pos & (KP_WSIZE - 1)] = old;
                    z->head[h] = (uint32_t)(z->pos + z->base);
                }
                z->pos++;
            }
            add_lit(z, s, w[z->pos - 1]);
            z->pending = 0;
        }
    }
}
