/* Output buffer, bit packing, symbol tables and Huffman code construction. */
#include <stdlib.h>

#include "kp.h"

/* ---------------------------------------------------------------- output buffer */

int kp_buf_grow(kp_buf *b, size_t extra) {
    if (b->oom) return -1;
    if (b->cap - b->len >= extra) return 0;
    size_t want = b->len + extra, cap = b->cap ? b->cap : 1 << 14;
    while (cap < want) cap += cap / 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
        b->oom = 1;
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

void kp_buf_free(kp_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = 0;
}

/* ---------------------------------------------------------------- bits */

/* Move 48 finished bits to the output. */
void kp_bw_spill(kp_bw *w) {
    kp_buf *o = w->out;
    if (o->cap - o->len >= 8 || kp_buf_grow(o, 8) == 0) {
        uint64_t v = w->bits;
        for (int i = 0; i < 8; i++) o->p[o->len + i] = (uint8_t)(v >> (8 * i));
        o->len += 6;
    }
    w->bits >>= 48;
    w->nbits -= 48;
}

/* Write out every pending bit, padding the last byte with zeros. */
static void emit_pending(kp_bw *w) {
    kp_buf *o = w->out;
    unsigned nbytes = (w->nbits + 7) / 8;
    if (nbytes && kp_buf_grow(o, nbytes) == 0) {
        for (unsigned i = 0; i < nbytes; i++) o->p[o->len++] = (uint8_t)(w->bits >> (8 * i));
    }
    w->bits = 0;
    w->nbits = 0;
}

void kp_bw_align(kp_bw *w) {
    if (w->open_hdr > 0) { /* an open block still owes its end-of-block code */
        kp_bw_put(w, w->lit->code[KP_EOB], w->lit->len[KP_EOB]);
        w->open_hdr = 0;
    }
    emit_pending(w);
}

void kp_bw_raw(kp_bw *w, const uint8_t *p, size_t n) {
    emit_pending(w); /* whole bytes only: callers are aligned */
    if (n && kp_buf_grow(w->out, n) == 0) {
        memcpy(w->out->p + w->out->len, p, n);
        w->out->len += n;
    }
}

void kp_bw_reset(kp_bw *w, kp_buf *out) {
    w->out = out;
    w->bits = 0;
    w->nbits = 0;
    w->open_hdr = 0;
    w->open_litonly = 0;
    if (!w->lit) {
        w->lit = &w->lit_a;
        w->spare = &w->lit_b;
    }
}

/* ---------------------------------------------------------------- symbol tables */

uint8_t kp_lcode[256];
uint8_t kp_dcode_lo[256];
const uint8_t kp_lext[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                             2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
const uint8_t kp_dext[32] = {0, 0, 0, 0, 1, 1, 2, 2, 3,  3,  4,  4,  5,  5,  6,
                             6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
kp_code kp_fixed_lit, kp_fixed_dist;

static void canonical(kp_code *c, int n) {
    unsigned count[17] = {0}, next[17];
    for (int i = 0; i < n; i++) count[c->len[i]]++;
    count[0] = 0;
    unsigned code = 0;
    for (int b = 1; b <= 16; b++) {
        code = (code + count[b - 1]) << 1;
        next[b] = code;
    }
    for (int i = 0; i < n; i++) {
        unsigned l = c->len[i];
        if (!l) {
            c->code[i] = 0;
            continue;
        }
        unsigned v = next[l]++, r = 0;
        for (unsigned k = 0; k < l; k++) r |= ((v >> k) & 1u) << (l - 1 - k);
        c->code[i] = (uint16_t)r;
    }
}

void kp_tables_init(void) {
    /* length - 3 -> symbol: each symbol covers base .. base + 2^extra - 1; 255 (length 258) is 28 */
    unsigned base = 0;
    for (int c = 0; c < 28; c++) {
        for (unsigned k = 0; k < (1u << kp_lext[c]) && base < 256; k++) kp_lcode[base++] = (uint8_t)c;
    }
    kp_lcode[255] = 28;
    base = 0;
    for (int c = 0; c < 16 && base < 256; c++) {
        for (unsigned k = 0; k < (1u << kp_dext[c]) && base < 256; k++) kp_dcode_lo[base++] = (uint8_t)c;
    }
    for (int i = 0; i < KP_NLIT + 2; i++)
        kp_fixed_lit.len[i] = i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8;
    canonical(&kp_fixed_lit, KP_NLIT + 2);
    for (int i = 0; i < KP_NDIST; i++) kp_fixed_dist.len[i] = 5;
    canonical(&kp_fixed_dist, KP_NDIST);
}

/* ---------------------------------------------------------------- Huffman lengths
 *
 * Length-limited code lengths by the lazy "boundary package-merge" walk that Go's and klauspost's
 * encoders use. Optimal codes are not unique when frequencies tie, so the walk itself (including
 * that a package wins a tie against a leaf) decides which optimal code comes out, and it is
 * followed exactly here.
 */

#define PM_NONE 0x7fffffff

typedef struct {
    int32_t last;   /* weight of the last chain made on this row */
    int32_t leaf;   /* weight of the next leaf this row could take */
    int32_t pair;   /* weight of the next package offered by the row below */
    int32_t needed; /* chains still to make on this row */
} pm_row;

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

/* keys: (freq << 16 | symbol), sorted ascending, cnt >= 3. Writes per-depth leaf counts. */
static void pm_depths(const uint32_t *keys, int cnt, int maxbits, int32_t *per_depth) {
    pm_row row[18];
    int32_t leaves[18][18]; /* leaves[r][j]: leaves left of the row-j ancestor of row r's last chain */
    memset(row, 0, sizeof row);
    memset(leaves, 0, sizeof leaves);
#define W(i) ((int32_t)(keys[i] >> 16))
    for (int r = 1; r <= maxbits; r++) {
        row[r].last = W(1);
        row[r].leaf = W(2);
        row[r].pair = r == 1 ? PM_NONE : W(0) + W(1);
        leaves[r][r] = 2;
    }
    row[maxbits].needed = 2 * cnt - 4;
    int r = maxbits;
    for (;;) {
        pm_row *cur = &row[r];
        if (cur->pair == PM_NONE && cur->leaf == PM_NONE) {
            cur->needed = 0;
            row[r + 1].pair = PM_NONE;
            r++;
            continue;
        }
        int32_t before = cur->last;
        if (cur->leaf < cur->pair) {
            int32_t k = ++leaves[r][r];
            cur->last = cur->leaf;
            cur->leaf = k < cnt ? W(k) : PM_NONE;
        } else {
            cur->last = cur->pair;
            memcpy(leaves[r], leaves[r - 1], sizeof(int32_t) * (size_t)r);
            row[r - 1].needed = 2;
        }
        if (--cur->needed == 0) {
            if (r == maxbits) break;
            row[r + 1].pair = before + cur->last;
            r++;
        } else {
            while (row[r - 1].needed > 0) r--;
        }
    }
#undef W
    for (int d = 1; d <= maxbits; d++) {
        int rr = maxbits - d + 1;
        per_depth[d] = leaves[maxbits][rr] - leaves[maxbits][rr - 1];
    }
}

void kp_code_build(kp_code *c, const uint16_t *freq, int n, int maxbits) {
    uint32_t keys[KP_NLIT + 2];
    int cnt = 0;
    for (int i = 0; i < n; i++) {
        c->len[i] = 0;
        if (freq[i]) keys[cnt++] = (uint32_t)freq[i] << 16 | (uint32_t)i;
    }
    if (cnt <= 2) {
        for (int j = 0; j < cnt; j++) c->len[keys[j] & 0xffff] = 1;
    } else {
        qsort(keys, (size_t)cnt, sizeof keys[0], cmp_u32);
        if (maxbits > cnt - 1) maxbits = cnt - 1;
        int32_t per_depth[18];
        pm_depths(keys, cnt, maxbits, per_depth);
        int end = cnt; /* the most frequent symbols get the shortest codes */
        for (int d = 1; d <= maxbits; d++) {
            for (int32_t k = 0; k < per_depth[d]; k++) c->len[keys[--end] & 0xffff] = (uint8_t)d;
        }
    }
    canonical(c, n);
}
