/* GNU gzip 1.12's deflate, as a push-driven streaming encoder.
 *
 * GNU gzip (deflate.c, trees.c, bits.c of its sources) descends from the same 1992 code as zlib but
 * went its own way: a fixed 64 KiB window refilled by read() calls of a fixed shape, a 15-bit
 * rolling hash, its own table of lazy-match settings, a literal buffer of 32 Ki entries that is cut
 * early by a "this block compresses well" estimate every 4096 symbols (levels 3..9), no special
 * end-of-stream handling beyond a final block, and an optional --rsyncable mode. Every one of
 * those details shows in the output bytes, so this file keeps them all, written from their
 * description.
 *
 * The original pulls its input with read(2) on a regular file: each read of n bytes returns
 * min(n, bytes left). The window contents (including the stale bytes past the end of the data,
 * which the match finder may look at near the end of the input) follow from that pattern, so the
 * encoder reproduces it exactly: it only refills the window once the refill is complete (or the
 * input has ended), keeping at most 64 KiB of not-yet-used input between calls. That makes the
 * output independent of how the caller splits the input.
 *
 * The compressor itself never blocks: gd_feed() runs the match loop until it needs input that has
 * not arrived, and resumes from the same point on the next call.
 */
#include "common.h"

enum {
    WSIZE = 0x8000,
    WMASK = WSIZE - 1,
    WINDOW_SIZE = 2 * WSIZE,
    HASH_BITS = 15,
    HASH_SIZE = 1 << HASH_BITS,
    HASH_MASK = HASH_SIZE - 1,
    H_SHIFT = (HASH_BITS + 3 - 1) / 3,
    MIN_MATCH = 3,
    MAX_MATCH = 258,
    MIN_LOOKAHEAD = MAX_MATCH + MIN_MATCH + 1,
    MAX_DIST = WSIZE - MIN_LOOKAHEAD,
    TOO_FAR = 4096,
    LIT_BUFSIZE = 0x8000,
    DIST_BUFSIZE = LIT_BUFSIZE,
    RSYNC_WIN = 4096,
    NIL = 0,
};

/* Deflate alphabet sizes. */
enum {
    MAX_BITS = 15,
    MAX_BL_BITS = 7,
    LENGTH_CODES = 29,
    LITERALS = 256,
    END_BLOCK = 256,
    L_CODES = LITERALS + 1 + LENGTH_CODES,
    D_CODES = 30,
    BL_CODES = 19,
    HEAP_SIZE = 2 * L_CODES + 1,
    REP_3_6 = 16,
    REPZ_3_10 = 17,
    REPZ_11_138 = 18,
};

#define NO_CHUNK_END 0xFFFFFFFFUL

/* gzip's level table: good length, lazy limit (max insert length at levels 1..3), nice length,
 * chain limit. Levels 1..3 use the greedy matcher, 4..9 the lazy one. */
static const struct {
    uint16_t good, lazy, nice, chain;
} LEVELS[10] = {
    {0, 0, 0, 0},         {4, 4, 8, 4},         {4, 5, 16, 8},     {4, 6, 32, 32},
    {4, 4, 16, 16},       {8, 16, 32, 32},      {8, 16, 128, 128}, {8, 32, 128, 256},
    {32, 128, 258, 1024}, {32, 258, 258, 4096},
};

static const uint8_t EXTRA_LBITS[LENGTH_CODES] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                                  2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint8_t EXTRA_DBITS[D_CODES] = {0, 0, 0, 0, 1, 1, 2,  2,  3,  3,  4,  4,  5,  5,  6,
                                             6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
static const uint8_t EXTRA_BLBITS[BL_CODES] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                               0, 0, 0, 0, 0, 0, 2, 3, 7};
static const uint8_t BL_ORDER[BL_CODES] = {16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                           11, 4,  12, 3, 13, 2, 14, 1, 15};

/* ---- Static tables, built once ---- */

static uint8_t length_code[MAX_MATCH - MIN_MATCH + 1];
static uint8_t dist_code[512];
static int base_length[LENGTH_CODES];
static int base_dist[D_CODES];
static uint16_t static_lcode[L_CODES + 2], static_llen[L_CODES + 2];
static uint16_t static_dcode[D_CODES], static_dlen[D_CODES];
static int tables_ready;

static unsigned reverse_bits(unsigned code, int len) {
    unsigned res = 0;
    do {
        res = (res << 1) | (code & 1);
        code >>= 1;
    } while (--len > 0);
    return res;
}

/* Canonical codes from code lengths (lengths already set for codes 0..max_code). */
static void assign_codes(uint16_t *code, const uint16_t *len, int max_code,
                         const uint16_t *bl_count) {
    uint16_t next[MAX_BITS + 1];
    uint16_t c = 0;
    for (int bits = 1; bits <= MAX_BITS; bits++) {
        c = (uint16_t)((c + bl_count[bits - 1]) << 1);
        next[bits] = c;
    }
    for (int n = 0; n <= max_code; n++) {
        int l = len[n];
        if (l != 0)
            code[n] = (uint16_t)reverse_bits(next[l]++, l);
    }
}

static void init_tables(void) {
    if (tables_ready)
        return;
    int length = 0, code;
    for (code = 0; code < LENGTH_CODES - 1; code++) {
        base_length[code] = length;
        for (int n = 0; n < (1 << EXTRA_LBITS[code]); n++)
            length_code[length++] = (uint8_t)code;
    }
    /* Length 258 has two encodings; the short one (code 285) wins. */
    length_code[length - 1] = (uint8_t)code;
    base_length[LENGTH_CODES - 1] = 0; /* unused for code 285 (no extra bits) */
    int dist = 0;
    for (code = 0; code < 16; code++) {
        base_dist[code] = dist;
        for (int n = 0; n < (1 << EXTRA_DBITS[code]); n++)
            dist_code[dist++] = (uint8_t)code;
    }
    dist >>= 7;
    for (; code < D_CODES; code++) {
        base_dist[code] = dist << 7;
        for (int n = 0; n < (1 << (EXTRA_DBITS[code] - 7)); n++)
            dist_code[256 + dist++] = (uint8_t)code;
    }
    uint16_t counts[MAX_BITS + 1] = {0};
    int n = 0;
    while (n <= 143)
        static_llen[n++] = 8, counts[8]++;
    while (n <= 255)
        static_llen[n++] = 9, counts[9]++;
    while (n <= 279)
        static_llen[n++] = 7, counts[7]++;
    while (n <= 287)
        static_llen[n++] = 8, counts[8]++;
    assign_codes(static_lcode, static_llen, L_CODES + 1, counts);
    for (n = 0; n < D_CODES; n++) {
        static_dlen[n] = 5;
        static_dcode[n] = (uint16_t)reverse_bits((unsigned)n, 5);
    }
    tables_ready = 1;
}

static inline unsigned d_code(unsigned dist) {
    return dist < 256 ? dist_code[dist] : dist_code[256 + (dist >> 7)];
}

/* ---- Huffman trees ---- */

/* One tree under construction. freq/code and len/dad are separate arrays here (gzip overlays
 * them); nothing reads one after the other is written, so the results are the same. */
typedef struct tree {
    uint16_t freq[HEAP_SIZE];
    uint16_t code[HEAP_SIZE];
    uint16_t len[HEAP_SIZE + 1];
    uint16_t dad[HEAP_SIZE];
    const uint16_t *static_len; /* NULL for the bit-length tree */
    const uint8_t *extra;
    int extra_base;
    int elems;
    int max_length;
    int max_code;
} tree;

/* Scratch shared by the three trees while one is built. */
typedef struct tree_work {
    int heap[2 * L_CODES + 1];
    int heap_len, heap_max;
    uint8_t depth[2 * L_CODES + 1];
    uint16_t bl_count[MAX_BITS + 1];
} tree_work;

struct gd_state {
    int level;
    unsigned max_lazy, good_match, nice_match, max_chain;
    int rsyncable;

    /* sliding window and hash chains */
    uint8_t window[WINDOW_SIZE];
    uint16_t prev[WSIZE];
    uint16_t head[HASH_SIZE];
    unsigned ins_h;
    unsigned strstart, lookahead, match_start, prev_length;
    long block_start;
    int eofile;
    int started;  /* the first read (64 KiB) has happened */
    int finished; /* the final block is out */

    /* state the match loop carries from one step to the next */
    unsigned match_length;
    unsigned prev_match;
    int match_available;
    int flush;

    /* --rsyncable */
    uint64_t rsync_sum;
    uint64_t rsync_chunk_end;

    /* symbols of the current block */
    uint8_t l_buf[LIT_BUFSIZE];
    uint16_t d_buf[DIST_BUFSIZE];
    uint8_t flag_buf[LIT_BUFSIZE / 8];
    unsigned last_lit, last_dist, last_flags;
    uint8_t flags, flag_bit;
    uint64_t opt_len, static_len;

    tree ltree, dtree, bltree;
    tree_work work;

    /* bit writer */
    uint64_t bitbuf;
    int bitcount;
    gz_out out;

    /* input received but not yet read into the window (< one refill) */
    uint8_t pending[WINDOW_SIZE];
    size_t pending_len;
};

/* Where input comes from during one gd_feed(): first the bytes kept from earlier calls, then the
 * caller's buffer. */
typedef struct source {
    gd_state *s;
    const uint8_t *data;
    size_t len;
    size_t pos;
} source;

static size_t source_avail(const source *src) {
    return src->s->pending_len + (src->len - src->pos);
}

/* read(2) on a regular file: min(want, what is left). */
static unsigned source_read(source *src, uint8_t *dst, unsigned want) {
    gd_state *s = src->s;
    unsigned got = 0;
    if (s->pending_len) {
        unsigned n = s->pending_len < want ? (unsigned)s->pending_len : want;
        memcpy(dst, s->pending, n);
        memmove(s->pending, s->pending + n, s->pending_len - n);
        s->pending_len -= n;
        got = n;
    }
    if (got < want && src->pos < src->len) {
        size_t left = src->len - src->pos;
        unsigned n = left < (size_t)(want - got) ? (unsigned)left : want - got;
        memcpy(dst + got, src->data + src->pos, n);
        src->pos += n;
        got += n;
    }
    return got;
}

/* ---- bit output ---- */

static inline void put_bits(gd_state *s, unsigned value, int length) {
    s->bitbuf |= (uint64_t)value << s->bitcount;
    s->bitcount += length;
    if (s->bitcount >= 32) {
        if (gz_out_reserve(&s->out, 4) == 0) {
            uint8_t *p = s->out.data + s->out.len;
            p[0] = (uint8_t)s->bitbuf;
            p[1] = (uint8_t)(s->bitbuf >> 8);
            p[2] = (uint8_t)(s->bitbuf >> 16);
            p[3] = (uint8_t)(s->bitbuf >> 24);
            s->out.len += 4;
        }
        s->bitbuf >>= 32;
        s->bitcount -= 32;
    }
}

/* Pad to a byte boundary with zero bits. */
static void align_bits(gd_state *s) {
    while (s->bitcount > 0) {
        uint8_t b = (uint8_t)s->bitbuf;
        gz_out_put(&s->out, &b, 1);
        s->bitbuf >>= 8;
        s->bitcount -= 8;
    }
    s->bitbuf = 0;
    s->bitcount = 0;
}

/* Stored-block body: align, LEN and NLEN (16 bits each, truncated as gzip does), then the bytes. */
static void put_stored(gd_state *s, const uint8_t *buf, unsigned len) {
    align_bits(s);
    uint8_t hdr[4] = {(uint8_t)len, (uint8_t)(len >> 8), (uint8_t)~len, (uint8_t)(~len >> 8)};
    gz_out_put(&s->out, hdr, 4);
    if (len)
        gz_out_put(&s->out, buf, len);
}

/* ---- tree construction ---- */

static inline int smaller(const tree *t, const tree_work *w, int n, int m) {
    return t->freq[n] < t->freq[m] || (t->freq[n] == t->freq[m] && w->depth[n] <= w->depth[m]);
}

static void sift_down(const tree *t, tree_work *w, int k) {
    int v = w->heap[k];
    int j = k << 1;
    while (j <= w->heap_len) {
        if (j < w->heap_len && smaller(t, w, w->heap[j + 1], w->heap[j]))
            j++;
        if (smaller(t, w, v, w->heap[j]))
            break;
        w->heap[k] = w->heap[j];
        k = j;
        j <<= 1;
    }
    w->heap[k] = v;
}

/* Code lengths from the finished tree, capped at max_length with gzip's rebalancing; updates the
 * block's optimal and static bit counts. */
static void assign_lengths(gd_state *s, tree *t) {
    tree_work *w = &s->work;
    int max_code = t->max_code, max_length = t->max_length;
    int overflow = 0, h;
    for (int b = 0; b <= MAX_BITS; b++)
        w->bl_count[b] = 0;
    t->len[w->heap[w->heap_max]] = 0;
    for (h = w->heap_max + 1; h < HEAP_SIZE; h++) {
        int n = w->heap[h];
        int bits = t->len[t->dad[n]] + 1;
        if (bits > max_length)
            bits = max_length, overflow++;
        t->len[n] = (uint16_t)bits;
        if (n > max_code)
            continue;
        w->bl_count[bits]++;
        int xbits = n >= t->extra_base ? t->extra[n - t->extra_base] : 0;
        uint64_t f = t->freq[n];
        s->opt_len += f * (uint64_t)(bits + xbits);
        if (t->static_len)
            s->static_len += f * (uint64_t)(t->static_len[n] + xbits);
    }
    if (overflow == 0)
        return;
    do {
        int bits = max_length - 1;
        while (w->bl_count[bits] == 0)
            bits--;
        w->bl_count[bits]--;
        w->bl_count[bits + 1] += 2;
        w->bl_count[max_length]--;
        overflow -= 2;
    } while (overflow > 0);
    h = HEAP_SIZE;
    for (int bits = max_length; bits != 0; bits--) {
        int n = w->bl_count[bits];
        while (n != 0) {
            int m = w->heap[--h];
            if (m > max_code)
                continue;
            if (t->len[m] != (unsigned)bits) {
                s->opt_len += (uint64_t)(((int64_t)bits - (int64_t)t->len[m]) * (int64_t)t->freq[m]);
                t->len[m] = (uint16_t)bits;
            }
            n--;
        }
    }
}

static void build_tree(gd_state *s, tree *t) {
    tree_work *w = &s->work;
    int elems = t->elems, max_code = -1, node = elems;
    w->heap_len = 0;
    w->heap_max = HEAP_SIZE;
    for (int n = 0; n < elems; n++) {
        if (t->freq[n] != 0) {
            w->heap[++w->heap_len] = max_code = n;
            w->depth[n] = 0;
        } else {
            t->len[n] = 0;
        }
    }
    /* At least two codes, so that every tree sends at least one bit. */
    while (w->heap_len < 2) {
        int fresh = w->heap[++w->heap_len] = (max_code < 2 ? ++max_code : 0);
        t->freq[fresh] = 1;
        w->depth[fresh] = 0;
        s->opt_len--;
        if (t->static_len)
            s->static_len -= t->static_len[fresh];
    }
    t->max_code = max_code;
    for (int n = w->heap_len / 2; n >= 1; n--)
        sift_down(t, w, n);
    do {
        int n = w->heap[1];
        w->heap[1] = w->heap[w->heap_len--];
        sift_down(t, w, 1);
        int m = w->heap[1];
        w->heap[--w->heap_max] = n;
        w->heap[--w->heap_max] = m;
        t->freq[node] = (uint16_t)(t->freq[n] + t->freq[m]);
        w->depth[node] =
            (uint8_t)((w->depth[n] >= w->depth[m] ? w->depth[n] : w->depth[m]) + 1);
        t->dad[n] = t->dad[m] = (uint16_t)node;
        w->heap[1] = node++;
        sift_down(t, w, 1);
    } while (w->heap_len >= 2);
    w->heap[--w->heap_max] = w->heap[1];
    assign_lengths(s, t);
    assign_codes(t->code, t->len, max_code, w->bl_count);
}

/* Run-length pass over a tree's code lengths: counts bit-length symbols (send == 0) or sends them
 * (send == 1). */
static void walk_lengths(gd_state *s, tree *t, int max_code, int send) {
    tree *bl = &s->bltree;
    int prevlen = -1, nextlen = t->len[0], count = 0, max_count = 7, min_count = 4;
    if (nextlen == 0)
        max_count = 138, min_count = 3;
    if (!send)
        t->len[max_code + 1] = 0xffff; /* guard */
    for (int n = 0; n <= max_code; n++) {
        int curlen = nextlen;
        nextlen = t->len[n + 1];
        if (++count < max_count && curlen == nextlen)
            continue;
        if (count < min_count) {
            if (send) {
                do
                    put_bits(s, bl->code[curlen], bl->len[curlen]);
                while (--count != 0);
            } else {
                bl->freq[curlen] = (uint16_t)(bl->freq[curlen] + count);
            }
        } else if (curlen != 0) {
            if (curlen != prevlen) {
                if (send) {
                    put_bits(s, bl->code[curlen], bl->len[curlen]);
                    count--;
                } else {
                    bl->freq[curlen]++;
                }
            }
            if (send) {
                put_bits(s, bl->code[REP_3_6], bl->len[REP_3_6]);
                put_bits(s, (unsigned)(count - 3), 2);
            } else {
                bl->freq[REP_3_6]++;
            }
        } else if (count <= 10) {
            if (send) {
                put_bits(s, bl->code[REPZ_3_10], bl->len[REPZ_3_10]);
                put_bits(s, (unsigned)(count - 3), 3);
            } else {
                bl->freq[REPZ_3_10]++;
            }
        } else {
            if (send) {
                put_bits(s, bl->code[REPZ_11_138], bl->len[REPZ_11_138]);
                put_bits(s, (unsigned)(count - 11), 7);
            } else {
                bl->freq[REPZ_11_138]++;
            }
        }
        count = 0;
        prevlen = curlen;
        if (nextlen == 0)
            max_count = 138, min_count = 3;
        else if (curlen == nextlen)
            max_count = 6, min_count = 3;
        else
            max_count = 7, min_count = 4;
    }
}

static int build_bl_tree(gd_state *s) {
    walk_lengths(s, &s->ltree, s->ltree.max_code, 0);
    walk_lengths(s, &s->dtree, s->dtree.max_code, 0);
    build_tree(s, &s->bltree);
    int max_blindex;
    for (max_blindex = BL_CODES - 1; max_blindex >= 3; max_blindex--)
        if (s->bltree.len[BL_ORDER[max_blindex]] != 0)
            break;
    s->opt_len += 3 * ((uint64_t)max_blindex + 1) + 5 + 5 + 4;
    return max_blindex;
}

static void send_trees(gd_state *s, int lcodes, int dcodes, int blcodes) {
    put_bits(s, (unsigned)(lcodes - 257), 5);
    put_bits(s, (unsigned)(dcodes - 1), 5);
    put_bits(s, (unsigned)(blcodes - 4), 4);
    for (int rank = 0; rank < blcodes; rank++)
        put_bits(s, s->bltree.len[BL_ORDER[rank]], 3);
    walk_lengths(s, &s->ltree, lcodes - 1, 1);
    walk_lengths(s, &s->dtree, dcodes - 1, 1);
}

static void send_symbols(gd_state *s, const uint16_t *lcode, const uint16_t *llen,
                         const uint16_t *dcode, const uint16_t *dlen) {
    unsigned lx = 0, dx = 0, fx = 0;
    uint8_t flag = 0;
    while (lx < s->last_lit) {
        if ((lx & 7) == 0)
            flag = s->flag_buf[fx++];
        unsigned lc = s->l_buf[lx++];
        if ((flag & 1) == 0) {
            put_bits(s, lcode[lc], llen[lc]);
        } else {
            unsigned code = length_code[lc];
            put_bits(s, lcode[code + LITERALS + 1], llen[code + LITERALS + 1]);
            int extra = EXTRA_LBITS[code];
            if (extra)
                put_bits(s, lc - (unsigned)base_length[code], extra);
            unsigned dist = s->d_buf[dx++];
            code = d_code(dist);
            put_bits(s, dcode[code], dlen[code]);
            extra = EXTRA_DBITS[code];
            if (extra)
                put_bits(s, dist - (unsigned)base_dist[code], extra);
        }
        flag >>= 1;
    }
    put_bits(s, lcode[END_BLOCK], llen[END_BLOCK]);
}

static void start_block(gd_state *s) {
    for (int n = 0; n < L_CODES; n++)
        s->ltree.freq[n] = 0;
    for (int n = 0; n < D_CODES; n++)
        s->dtree.freq[n] = 0;
    for (int n = 0; n < BL_CODES; n++)
        s->bltree.freq[n] = 0;
    s->ltree.freq[END_BLOCK] = 1;
    s->opt_len = s->static_len = 0;
    s->last_lit = s->last_dist = s->last_flags = 0;
    s->flags = 0;
    s->flag_bit = 1;
}

/* End the current block: stored, fixed or dynamic, whichever gzip's estimate picks. `buf` is
 * NULL when the block's input has already left the window (then it cannot be stored). */
static void flush_block(gd_state *s, const uint8_t *buf, uint64_t stored_len, int pad, int eof) {
    s->flag_buf[s->last_flags] = s->flags;
    build_tree(s, &s->ltree);
    build_tree(s, &s->dtree);
    int max_blindex = build_bl_tree(s);
    uint64_t opt_lenb = (s->opt_len + 3 + 7) >> 3;
    uint64_t static_lenb = (s->static_len + 3 + 7) >> 3;
    if (static_lenb <= opt_lenb)
        opt_lenb = static_lenb;
    if (stored_len + 4 <= opt_lenb && buf != NULL) {
        put_bits(s, (unsigned)eof, 3);
        put_stored(s, buf, (unsigned)stored_len);
    } else if (static_lenb == opt_lenb) {
        put_bits(s, (1u << 1) + (unsigned)eof, 3);
        send_symbols(s, static_lcode, static_llen, static_dcode, static_dlen);
    } else {
        put_bits(s, (2u << 1) + (unsigned)eof, 3);
        send_trees(s, s->ltree.max_code + 1, s->dtree.max_code + 1, max_blindex + 1);
        send_symbols(s, s->ltree.code, s->ltree.len, s->dtree.code, s->dtree.len);
    }
    start_block(s);
    if (eof) {
        align_bits(s);
    } else if (pad && (s->bitcount & 7) != 0) {
        /* --rsyncable: an empty stored block brings the stream to a byte boundary */
        put_bits(s, 0, 3);
        put_stored(s, NULL, 0);
    }
}

/* Record a literal (dist == 0) or a match; return 1 when the block should end here. */
static int tally(gd_state *s, unsigned dist, unsigned lc) {
    s->l_buf[s->last_lit++] = (uint8_t)lc;
    if (dist == 0) {
        s->ltree.freq[lc]++;
    } else {
        dist--;
        s->ltree.freq[length_code[lc] + LITERALS + 1]++;
        s->dtree.freq[d_code(dist)]++;
        s->d_buf[s->last_dist++] = (uint16_t)dist;
        s->flags |= s->flag_bit;
    }
    s->flag_bit = (uint8_t)(s->flag_bit << 1);
    if ((s->last_lit & 7) == 0) {
        s->flag_buf[s->last_flags++] = s->flags;
        s->flags = 0;
        s->flag_bit = 1;
    }
    if (s->level > 2 && (s->last_lit & 0xfff) == 0) {
        /* Rough size of the block so far: cut it when it already halves its input. */
        uint64_t out_length = (uint64_t)s->last_lit * 8;
        uint64_t in_length = (uint64_t)s->strstart - (uint64_t)s->block_start;
        for (int dc = 0; dc < D_CODES; dc++)
            out_length += (uint64_t)s->dtree.freq[dc] * (5 + EXTRA_DBITS[dc]);
        out_length >>= 3;
        if (s->last_dist < s->last_lit / 2 && out_length < in_length / 2)
            return 1;
    }
    return s->last_lit == LIT_BUFSIZE - 1 || s->last_dist == DIST_BUFSIZE;
}

/* ---- matching ---- */

#define UPDATE_HASH(h, c) ((h) = (((h) << H_SHIFT) ^ (c)) & HASH_MASK)

static inline unsigned insert_string(gd_state *s, unsigned pos) {
    UPDATE_HASH(s->ins_h, s->window[pos + MIN_MATCH - 1]);
    unsigned head = s->head[s->ins_h];
    s->prev[pos & WMASK] = (uint16_t)head;
    s->head[s->ins_h] = (uint16_t)pos;
    return head;
}

/* Longest match at strstart along the chain from cur_match, better than prev_length. Like gzip,
 * byte 2 of a candidate is not compared (the hash implies it for same-bucket entries) and the
 * comparison may run past the end of the data into stale window bytes (the caller clips). */
static unsigned longest_match(gd_state *s, unsigned cur_match) {
    unsigned chain = s->max_chain;
    const uint8_t *win = s->window;
    const uint8_t *scan = win + s->strstart;
    const uint8_t *strend = win + s->strstart + MAX_MATCH;
    unsigned best_len = s->prev_length;
    unsigned limit = s->strstart > (unsigned)MAX_DIST ? s->strstart - MAX_DIST : NIL;
    uint8_t scan_end1 = scan[best_len - 1];
    uint8_t scan_end = scan[best_len];
    if (s->prev_length >= s->good_match)
        chain >>= 2;
    do {
        const uint8_t *match = win + cur_match;
        if (match[best_len] != scan_end || match[best_len - 1] != scan_end1 || match[0] != scan[0] ||
            match[1] != scan[1])
            continue;
        const uint8_t *p = scan + 2, *q = match + 2;
        do {
        } while (*++p == *++q && *++p == *++q && *++p == *++q && *++p == *++q && *++p == *++q &&
                 *++p == *++q && *++p == *++q && *++p == *++q && p < strend);
        unsigned len = MAX_MATCH - (unsigned)(strend - p);
        if (len > best_len) {
            s->match_start = cur_match;
            best_len = len;
            if (len >= s->nice_match)
                break;
            scan_end1 = scan[best_len - 1];
            scan_end = scan[best_len];
        }
    } while ((cur_match = s->prev[cur_match & WMASK]) > limit && --chain != 0);
    return best_len;
}

/* How many bytes the next refill asks read() for (after the slide it would do). */
static unsigned refill_size(const gd_state *s) {
    unsigned more = WINDOW_SIZE - s->lookahead - s->strstart;
    if (s->strstart >= WSIZE + MAX_DIST)
        more += WSIZE;
    return more;
}

static void fill_window(gd_state *s, source *src) {
    unsigned more = WINDOW_SIZE - s->lookahead - s->strstart;
    if (s->strstart >= WSIZE + MAX_DIST) {
        memcpy(s->window, s->window + WSIZE, WSIZE);
        s->match_start -= WSIZE;
        s->strstart -= WSIZE;
        if (s->rsync_chunk_end != NO_CHUNK_END)
            s->rsync_chunk_end -= WSIZE;
        s->block_start -= WSIZE;
        for (unsigned n = 0; n < HASH_SIZE; n++) {
            unsigned m = s->head[n];
            s->head[n] = (uint16_t)(m >= WSIZE ? m - WSIZE : NIL);
        }
        for (unsigned n = 0; n < WSIZE; n++) {
            unsigned m = s->prev[n];
            s->prev[n] = (uint16_t)(m >= WSIZE ? m - WSIZE : NIL);
        }
        more += WSIZE;
    }
    if (!s->eofile) {
        unsigned n = source_read(src, s->window + s->strstart + s->lookahead, more);
        if (n == 0) {
            s->eofile = 1;
            memset(s->window + s->strstart + s->lookahead, 0, MIN_MATCH - 1);
        } else {
            s->lookahead += n;
        }
    }
}

static void rsync_roll(gd_state *s, unsigned start, unsigned num) {
    unsigned i;
    if (start < RSYNC_WIN) {
        for (i = start; i < RSYNC_WIN; i++) {
            if (i == start + num)
                return;
            s->rsync_sum += s->window[i];
        }
        num -= RSYNC_WIN - start;
        start = RSYNC_WIN;
    }
    for (i = start; i < start + num; i++) {
        s->rsync_sum += s->window[i];
        s->rsync_sum -= s->window[i - RSYNC_WIN];
        if (s->rsync_chunk_end == NO_CHUNK_END && s->rsync_sum % RSYNC_WIN == 0)
            s->rsync_chunk_end = i;
    }
}

#define ROLL(s, start, n)                                                                          \
    do {                                                                                           \
        if ((s)->rsyncable)                                                                        \
            rsync_roll((s), (start), (n));                                                         \
    } while (0)

static void end_block(gd_state *s, int eof) {
    const uint8_t *buf = s->block_start >= 0 ? s->window + (unsigned)s->block_start : NULL;
    flush_block(s, buf, (uint64_t)((long)s->strstart - s->block_start), s->flush - 1, eof);
}

static inline int rsync_due(gd_state *s) {
    if (s->rsyncable && (uint64_t)s->strstart > s->rsync_chunk_end) {
        s->rsync_chunk_end = NO_CHUNK_END;
        return 1;
    }
    return 0;
}

/* One step of the greedy matcher (levels 1..3). */
static void step_fast(gd_state *s) {
    unsigned hash_head = insert_string(s, s->strstart);
    if (hash_head != NIL && s->strstart - hash_head <= MAX_DIST &&
        s->strstart <= WINDOW_SIZE - MIN_LOOKAHEAD) {
        s->match_length = longest_match(s, hash_head);
        if (s->match_length > s->lookahead)
            s->match_length = s->lookahead;
    }
    if (s->match_length >= MIN_MATCH) {
        s->flush = tally(s, s->strstart - s->match_start, s->match_length - MIN_MATCH);
        s->lookahead -= s->match_length;
        ROLL(s, s->strstart, s->match_length);
        if (s->match_length <= s->max_lazy) {
            s->match_length--;
            do {
                s->strstart++;
                insert_string(s, s->strstart);
            } while (--s->match_length != 0);
            s->strstart++;
        } else {
            s->strstart += s->match_length;
            s->match_length = 0;
            s->ins_h = s->window[s->strstart];
            UPDATE_HASH(s->ins_h, s->window[s->strstart + 1]);
        }
    } else {
        s->flush = tally(s, 0, s->window[s->strstart]);
        ROLL(s, s->strstart, 1);
        s->lookahead--;
        s->strstart++;
    }
    if (rsync_due(s))
        s->flush = 2;
    if (s->flush) {
        end_block(s, 0);
        s->block_start = s->strstart;
    }
}

/* One step of the lazy matcher (levels 4..9). */
static void step_lazy(gd_state *s) {
    unsigned hash_head = insert_string(s, s->strstart);
    s->prev_length = s->match_length;
    s->prev_match = s->match_start;
    s->match_length = MIN_MATCH - 1;
    if (hash_head != NIL && s->prev_length < s->max_lazy && s->strstart - hash_head <= MAX_DIST &&
        s->strstart <= WINDOW_SIZE - MIN_LOOKAHEAD) {
        s->match_length = longest_match(s, hash_head);
        if (s->match_length > s->lookahead)
            s->match_length = s->lookahead;
        if (s->match_length == MIN_MATCH && s->strstart - s->match_start > TOO_FAR)
            s->match_length--;
    }
    if (s->prev_length >= MIN_MATCH && s->match_length <= s->prev_length) {
        s->flush = tally(s, s->strstart - 1 - s->prev_match, s->prev_length - MIN_MATCH);
        s->lookahead -= s->prev_length - 1;
        s->prev_length -= 2;
        ROLL(s, s->strstart, s->prev_length + 1);
        do {
            s->strstart++;
            insert_string(s, s->strstart);
        } while (--s->prev_length != 0);
        s->match_available = 0;
        s->match_length = MIN_MATCH - 1;
        s->strstart++;
        if (rsync_due(s))
            s->flush = 2;
        if (s->flush) {
            end_block(s, 0);
            s->block_start = s->strstart;
        }
    } else if (s->match_available) {
        s->flush = tally(s, 0, s->window[s->strstart - 1]);
        if (rsync_due(s))
            s->flush = 2;
        if (s->flush) {
            end_block(s, 0);
            s->block_start = s->strstart;
        }
        ROLL(s, s->strstart, 1);
        s->strstart++;
        s->lookahead--;
    } else {
        if (rsync_due(s)) {
            s->flush = 2;
            end_block(s, 0);
            s->block_start = s->strstart;
        }
        s->match_available = 1;
        ROLL(s, s->strstart, 1);
        s->strstart++;
        s->lookahead--;
    }
}

/* ---- driver ---- */

gd_state *gd_create(int level, int rsyncable) {
    init_tables();
    gd_state *s = calloc(1, sizeof(gd_state));
    if (s == NULL)
        return NULL;
    s->level = level;
    s->max_lazy = LEVELS[level].lazy;
    s->good_match = LEVELS[level].good;
    s->nice_match = LEVELS[level].nice;
    s->max_chain = LEVELS[level].chain;
    s->rsyncable = rsyncable;
    s->rsync_chunk_end = NO_CHUNK_END;
    s->match_length = level <= 3 ? 0 : MIN_MATCH - 1;
    s->prev_length = MIN_MATCH - 1;

    s->ltree.static_len = static_llen;
    s->ltree.extra = EXTRA_LBITS;
    s->ltree.extra_base = LITERALS + 1;
    s->ltree.elems = L_CODES;
    s->ltree.max_length = MAX_BITS;
    s->dtree.static_len = static_dlen;
    s->dtree.extra = EXTRA_DBITS;
    s->dtree.extra_base = 0;
    s->dtree.elems = D_CODES;
    s->dtree.max_length = MAX_BITS;
    s->bltree.static_len = NULL;
    s->bltree.extra = EXTRA_BLBITS;
    s->bltree.extra_base = 0;
    s->bltree.elems = BL_CODES;
    s->bltree.max_length = MAX_BL_BITS;
    start_block(s);
    return s;
}

void gd_destroy(gd_state *s) {
    if (s == NULL)
        return;
    gz_out_release(&s->out);
    free(s);
}

gz_out *gd_output(gd_state *s) { return &s->out; }

/* Keep the unread part of the caller's buffer for the next call (it is less than one refill). */
static void stash(gd_state *s, source *src) {
    size_t left = src->len - src->pos;
    if (left == 0)
        return;
    memcpy(s->pending + s->pending_len, src->data + src->pos, left);
    s->pending_len += left;
    src->pos = src->len;
}

int gd_feed(gd_state *s, const uint8_t *data, size_t len, int final) {
    source src = {s, data, len, 0};
    if (s->finished)
        return 0;
    if (!s->started) {
        /* The first read asks for the whole 64 KiB window. */
        if (!final && source_avail(&src) < WINDOW_SIZE) {
            stash(s, &src);
            return s->out.failed ? -1 : 0;
        }
        s->started = 1;
        s->lookahead = source_read(&src, s->window, WINDOW_SIZE);
        if (s->lookahead == 0) {
            s->eofile = 1;
        } else {
            while (s->lookahead < MIN_LOOKAHEAD && !s->eofile)
                fill_window(s, &src);
            s->ins_h = 0;
            for (int j = 0; j < MIN_MATCH - 1; j++)
                UPDATE_HASH(s->ins_h, s->window[j]);
        }
    }
    int fast = s->level <= 3;
    for (;;) {
        while (s->lookahead < MIN_LOOKAHEAD && !s->eofile) {
            if (!final && source_avail(&src) < refill_size(s)) {
                stash(s, &src);
                return s->out.failed ? -1 : 0;
            }
            fill_window(s, &src);
        }
        if (s->lookahead == 0)
            break;
        if (fast)
            step_fast(s);
        else
            step_lazy(s);
        if (s->out.failed)
            return -1;
    }
    if (!fast && s->match_available)
        tally(s, 0, s->window[s->strstart - 1]);
    end_block(s, 1);
    s->finished = 1;
    return s->out.failed ? -1 : 0;
}
