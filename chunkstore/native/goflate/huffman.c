/* Block writing for the Go flate re-implementation: the bit writer, Go's length-limited Huffman
 * code construction (its exact tie-breaking), the run-length coding of code lengths, and the
 * size rules that choose between stored, fixed and dynamic blocks. */
#include "goflate.h"

#include <stdlib.h>
#include <string.h>

/* RFC 1951 tables */
static const uint8_t LEN_EXTRA[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t LEN_BASE[29] = {0,  1,  2,  3,  4,  5,  6,   7,   8,   10,
                                      12, 14, 16, 20, 24, 28, 32,  40,  48,  56,
                                      64, 80, 96, 112, 128, 160, 192, 224, 255};
static const uint8_t DIST_EXTRA[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                       6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
static const uint16_t DIST_BASE[30] = {1,    2,    3,    4,    5,    7,     9,     13,
                                       17,   25,   33,   49,   65,   97,    129,   193,
                                       257,  385,  513,  769,  1025, 1537,  2049,  3073,
                                       4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t CLEN_ORDER[GF_NCLEN] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5,
                                             11, 4,  12, 3, 13, 2, 14, 1, 15};

/* (length - 3) -> length code 0..28; (distance - 1) -> distance code */
static uint8_t len_code_of[256];
static uint8_t dist_code_lo[512]; /* for (distance - 1) < 256, and for its >> 7 above */
static gf_code fixed_lit[GF_NLIT];
static gf_code fixed_dist[GF_NDIST];
static gf_code huff_only_dist[GF_NDIST]; /* one used distance code: 0, length 1 */

static inline unsigned dist_code(uint32_t d) /* d = distance - 1 */
{
    return d < 256 ? dist_code_lo[d] : dist_code_lo[256 + (d >> 7)];
}

static uint16_t reverse_bits(uint16_t v, int n)
{
    uint16_t r = 0;
    for (int i = 0; i < n; i++) {
        r = (uint16_t)((r << 1) | (v & 1));
        v >>= 1;
    }
    return r;
}

/* canonical codes (RFC 1951 3.2.2) from lengths already in codes[i].len */
static void canonical(gf_code *codes, int n)
{
    int count[16] = {0};
    uint16_t next[16];
    for (int i = 0; i < n; i++)
        count[codes[i].len]++;
    count[0] = 0;
    uint16_t c = 0;
    for (int bits = 1; bits < 16; bits++) {
        c = (uint16_t)((c + count[bits - 1]) << 1);
        next[bits] = c;
    }
    for (int i = 0; i < n; i++) {
        int l = codes[i].len;
        if (l)
            codes[i].code = reverse_bits(next[l]++, l);
    }
}

void gf_tables_init(void)
{
    static int done = 0;
    if (done)
        return;
    for (int code = 0; code < 28; code++)
        for (int k = 0; k < (1 << LEN_EXTRA[code]); k++)
            len_code_of[LEN_BASE[code] + k] = (uint8_t)code;
    len_code_of[255] = 28;
    for (int code = 0; code < 30; code++) {
        for (int k = 0; k < (1 << DIST_EXTRA[code]); k++) {
            int d = DIST_BASE[code] - 1 + k;
            if (d < 256)
                dist_code_lo[d] = (uint8_t)code;
            else if ((d & 127) == 0)
                dist_code_lo[256 + (d >> 7)] = (uint8_t)code;
        }
    }
    /* RFC 1951's fixed code covers 288 symbols; 286 and 287 are never sent but take codes */
    gf_code all_fixed[288];
    for (int i = 0; i < 288; i++)
        all_fixed[i].len = i < 144 ? 8 : i < 256 ? 9 : i < 280 ? 7 : 8;
    canonical(all_fixed, 288);
    memcpy(fixed_lit, all_fixed, sizeof fixed_lit);
    for (int i = 0; i < GF_NDIST; i++)
        fixed_dist[i].len = 5;
    canonical(fixed_dist, GF_NDIST);
    memset(huff_only_dist, 0, sizeof huff_only_dist);
    huff_only_dist[0].len = 1;
    huff_only_dist[0].code = 0;
    done = 1;
}

/* ---------------------------------------------------------------- bits */

int gf_reserve(gf_bits *b, size_t extra)
{
    if (b->failed)
        return -1;
    size_t need = b->len + extra + 16;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->buf, cap);
    if (!p) {
        b->failed = 1;
        return -1;
    }
    b->buf = p;
    b->cap = cap;
    return 0;
}

/* callers reserve room first; at most 16 bits at a time */
static inline void put(gf_bits *b, uint32_t value, unsigned n)
{
    b->acc |= (uint64_t)value << b->nacc;
    b->nacc += n;
    if (b->nacc >= 32) {
        uint8_t *o = b->buf + b->len;
        uint64_t a = b->acc;
        o[0] = (uint8_t)a;
        o[1] = (uint8_t)(a >> 8);
        o[2] = (uint8_t)(a >> 16);
        o[3] = (uint8_t)(a >> 24);
        b->len += 4;
        b->acc = a >> 32;
        b->nacc -= 32;
    }
}

static inline void put_code(gf_bits *b, gf_code c)
{
    put(b, c.code, c.len);
}

void gf_put(gf_bits *b, uint32_t value, unsigned nbits)
{
    put(b, value, nbits);
}

/* pad to a byte boundary and move every whole byte to the buffer */
void gf_align(gf_bits *b)
{
    while (b->nacc > 0) {
        b->buf[b->len++] = (uint8_t)b->acc;
        b->acc >>= 8;
        b->nacc = b->nacc > 8 ? b->nacc - 8 : 0;
    }
    b->acc = 0;
}

void gf_block_stored(gf_bits *b, const uint8_t *data, int len, int final)
{
    if (gf_reserve(b, (size_t)len + 16))
        return;
    put(b, final ? 1 : 0, 3);
    gf_align(b);
    put(b, (uint32_t)len, 16);
    put(b, (uint32_t)(~len & 0xffff), 16);
    gf_align(b);
    if (data && len) {
        memcpy(b->buf + b->len, data, (size_t)len);
        b->len += (size_t)len;
    }
}

/* ---------------------------------------------------------------- codes */

typedef struct {
    uint16_t sym;
    int32_t freq;
} node;

static int by_freq_then_symbol(const void *pa, const void *pb)
{
    const node *a = pa, *b = pb;
    if (a->freq != b->freq)
        return a->freq < b->freq ? -1 : 1;
    return a->sym < b->sym ? -1 : a->sym > b->sym;
}

/* Go's length-limited construction. `list` holds n >= 3 leaves by ascending (freq, symbol),
 * plus room for a sentinel. Writes how many leaves get each length 1..returned maximum. */
static int length_counts(node *list, int n, int max_bits, int32_t *per_len)
{
    struct {
        int32_t last, next_leaf, next_pair, needed;
    } lv[18];
    int32_t taken[17][17]; /* taken[d][j]: leaves left of the level-j ancestor of d's last node */
    memset(lv, 0, sizeof lv);
    memset(taken, 0, sizeof taken);
    list[n].sym = 0xffff;
    list[n].freq = INT32_MAX;
    if (max_bits > n - 1)
        max_bits = n - 1;
    for (int d = 1; d <= max_bits; d++) {
        lv[d].last = list[1].freq;
        lv[d].next_leaf = list[2].freq;
        lv[d].next_pair = d == 1 ? INT32_MAX : list[0].freq + list[1].freq;
        taken[d][d] = 2;
    }
    lv[max_bits].needed = 2 * n - 4;
    int d = max_bits;
    for (;;) {
        if (lv[d].next_pair == INT32_MAX && lv[d].next_leaf == INT32_MAX) {
            /* nothing left to take at this depth */
            lv[d].needed = 0;
            lv[d + 1].next_pair = INT32_MAX;
            d++;
            continue;
        }
        int32_t before = lv[d].last;
        if (lv[d].next_leaf < lv[d].next_pair) {
            int32_t k = taken[d][d] + 1;
            lv[d].last = lv[d].next_leaf;
            taken[d][d] = k;
            lv[d].next_leaf = list[k].freq;
        } else {
            lv[d].last = lv[d].next_pair;
            memcpy(taken[d], taken[d - 1], (size_t)d * sizeof(int32_t));
            lv[d - 1].needed = 2;
        }
        if (--lv[d].needed == 0) {
            if (d == max_bits)
                break;
            lv[d + 1].next_pair = before + lv[d].last;
            d++;
        } else {
            while (lv[d - 1].needed > 0)
                d--;
        }
    }
    for (int bits = 1; bits <= max_bits; bits++) {
        int depth = max_bits + 1 - bits;
        per_len[bits] = taken[max_bits][depth] - taken[max_bits][depth - 1];
    }
    return max_bits;
}

/* Huffman code for freq[0..n) limited to max_bits, as Go builds it. */
static void build_code(const int32_t *freq, int n, int max_bits, gf_code *codes)
{
    node list[GF_NLIT + 1];
    int count = 0;
    for (int i = 0; i < n; i++) {
        codes[i].len = 0;
        if (freq[i] != 0) {
            list[count].sym = (uint16_t)i;
            list[count].freq = freq[i];
            count++;
        }
    }
    if (count <= 2) {
        for (int k = 0; k < count; k++) {
            codes[list[k].sym].len = 1;
            codes[list[k].sym].code = (uint16_t)k;
        }
        return;
    }
    qsort(list, (size_t)count, sizeof(node), by_freq_then_symbol);
    int32_t per_len[17] = {0};
    int top = length_counts(list, count, max_bits, per_len);
    /* the most frequent leaves (end of the list) get the shortest codes */
    int end = count;
    for (int bits = 1; bits <= top; bits++) {
        for (int k = 0; k < per_len[bits]; k++)
            codes[list[--end].sym].len = (uint8_t)bits;
    }
    canonical(codes, n);
}

static long bit_cost(const gf_code *codes, const int32_t *freq, int n)
{
    long total = 0;
    for (int i = 0; i < n; i++)
        if (freq[i])
            total += (long)freq[i] * codes[i].len;
    return total;
}

/* Run-length code the lengths of lit[0..nlit) then dist[0..ndist) (RFC 1951 3.2.7) in Go's way;
 * counts the code-length symbols in h->clen_freq. */
static void code_lengths_rle(gf_huff *h, const gf_code *lit, int nlit, const gf_code *dist,
                             int ndist)
{
    uint8_t lens[GF_NLIT + GF_NDIST + 1];
    int total = nlit + ndist;
    for (int i = 0; i < nlit; i++)
        lens[i] = lit[i].len;
    for (int i = 0; i < ndist; i++)
        lens[nlit + i] = dist[i].len;
    memset(h->clen_freq, 0, sizeof h->clen_freq);
    int o = 0;
    int i = 0;
    while (i < total) {
        uint8_t v = lens[i];
        int run = 1;
        while (i + run < total && lens[i + run] == v)
            run++;
        i += run;
        if (v != 0) {
            h->rle[o++] = v;
            h->rle[o++] = 0;
            h->clen_freq[v]++;
            run--;
            while (run >= 3) {
                int k = run < 6 ? run : 6;
                h->rle[o++] = 16;
                h->rle[o++] = (uint8_t)(k - 3);
                h->clen_freq[16]++;
                run -= k;
            }
        } else {
            while (run >= 11) {
                int k = run < 138 ? run : 138;
                h->rle[o++] = 18;
                h->rle[o++] = (uint8_t)(k - 11);
                h->clen_freq[18]++;
                run -= k;
            }
            if (run >= 3) {
                h->rle[o++] = 17;
                h->rle[o++] = (uint8_t)(run - 3);
                h->clen_freq[17]++;
                run = 0;
            }
        }
        while (run-- > 0) {
            h->rle[o++] = v;
            h->rle[o++] = 0;
            h->clen_freq[v]++;
        }
    }
    h->nrle = o / 2;
}

/* bits of a dynamic block: header, code lengths and the symbols (plus `extra`) */
static long dynamic_bits(gf_huff *h, const gf_code *lit, const gf_code *dist, long extra,
                         int *nclen_out)
{
    int nclen = GF_NCLEN;
    while (nclen > 4 && h->clen_freq[CLEN_ORDER[nclen - 1]] == 0)
        nclen--;
    *nclen_out = nclen;
    long header = 3 + 5 + 5 + 4 + 3 * nclen + bit_cost(h->clen, h->clen_freq, GF_NCLEN) +
                  2L * h->clen_freq[16] + 3L * h->clen_freq[17] + 7L * h->clen_freq[18];
    return header + bit_cost(lit, h->lit_freq, GF_NLIT) + bit_cost(dist, h->dist_freq, GF_NDIST) +
           extra;
}

static void write_dynamic_header(gf_huff *h, gf_bits *b, int nlit, int ndist, int nclen)
{
    put(b, 4, 3); /* BFINAL 0, BTYPE 2 */
    put(b, (uint32_t)(nlit - 257), 5);
    put(b, (uint32_t)(ndist - 1), 5);
    put(b, (uint32_t)(nclen - 4), 4);
    for (int i = 0; i < nclen; i++)
        put(b, h->clen[CLEN_ORDER[i]].len, 3);
    static const uint8_t rep_bits[19] = {[16] = 2, [17] = 3, [18] = 7};
    for (int i = 0; i < h->nrle; i++) {
        uint8_t sym = h->rle[2 * i];
        put_code(b, h->clen[sym]);
        if (sym >= 16)
            put(b, h->rle[2 * i + 1], rep_bits[sym]);
    }
}

/* histogram of the tokens; the number of literal/length and distance codes to send */
static void count_tokens(gf_huff *h, const uint32_t *tokens, int n, int *nlit, int *ndist)
{
    memset(h->lit_freq, 0, sizeof h->lit_freq);
    memset(h->dist_freq, 0, sizeof h->dist_freq);
    for (int i = 0; i < n; i++) {
        uint32_t t = tokens[i];
        if (!(t & GF_TOK_MATCH)) {
            h->lit_freq[t]++;
        } else {
            h->lit_freq[257 + len_code_of[(t >> 16) & 0xff]]++;
            h->dist_freq[dist_code(t & 0xffff)]++;
        }
    }
    int nl = GF_NLIT;
    while (h->lit_freq[nl - 1] == 0)
        nl--;
    int nd = GF_NDIST;
    while (nd > 0 && h->dist_freq[nd - 1] == 0)
        nd--;
    if (nd == 0) {
        /* no match: one distance code is still counted (and described) */
        h->dist_freq[0] = 1;
        nd = 1;
    }
    *nlit = nl;
    *ndist = nd;
    build_code(h->lit_freq, GF_NLIT, 15, h->lit);
    build_code(h->dist_freq, GF_NDIST, 15, h->dist);
}

static void write_tokens(gf_bits *b, const uint32_t *tokens, int n, const gf_code *lit,
                         const gf_code *dist)
{
    for (int i = 0; i < n; i++) {
        uint32_t t = tokens[i];
        if (!(t & GF_TOK_MATCH)) {
            put_code(b, lit[t]);
            continue;
        }
        uint32_t xl = (t >> 16) & 0xff;
        unsigned lc = len_code_of[xl];
        put_code(b, lit[257 + lc]);
        if (LEN_EXTRA[lc])
            put(b, xl - LEN_BASE[lc], LEN_EXTRA[lc]);
        uint32_t xd = t & 0xffff;
        unsigned dc = dist_code(xd);
        put_code(b, dist[dc]);
        if (DIST_EXTRA[dc])
            put(b, xd - (DIST_BASE[dc] - 1u), DIST_EXTRA[dc]);
    }
}

void gf_block_tokens(gf_huff *h, gf_bits *b, uint32_t *tokens, int ntokens, const uint8_t *input,
                     int input_len, int have_input)
{
    if (gf_reserve(b, 1024 + 6 * (size_t)ntokens + (size_t)(have_input ? input_len : 0)))
        return;
    tokens[ntokens++] = GF_EOB;
    int nlit, ndist;
    count_tokens(h, tokens, ntokens, &nlit, &ndist);

    int storable = have_input && input_len <= GF_STORE_MAX;
    long stored = storable ? ((long)input_len + 5) * 8 : 0;
    long extra = 0;
    if (storable) {
        /* extra bits matter only against a stored block: both codes pay them alike */
        for (int c = 257 + 8; c < nlit; c++)
            extra += (long)h->lit_freq[c] * LEN_EXTRA[c - 257];
        for (int c = 4; c < ndist; c++)
            extra += (long)h->dist_freq[c] * DIST_EXTRA[c];
    }
    long best = 3 + bit_cost(fixed_lit, h->lit_freq, GF_NLIT) +
                bit_cost(fixed_dist, h->dist_freq, GF_NDIST) + extra;
    int use_fixed = 1;

    code_lengths_rle(h, h->lit, nlit, h->dist, ndist);
    build_code(h->clen_freq, GF_NCLEN, 7, h->clen);
    int nclen;
    long dyn = dynamic_bits(h, h->lit, h->dist, extra, &nclen);
    if (dyn < best) {
        best = dyn;
        use_fixed = 0;
    }
    if (storable && stored < best) {
        gf_block_stored(b, input, input_len, 0);
        return;
    }
    if (use_fixed) {
        put(b, 2, 3); /* BFINAL 0, BTYPE 1 */
        write_tokens(b, tokens, ntokens, fixed_lit, fixed_dist);
    } else {
        write_dynamic_header(h, b, nlit, ndist, nclen);
        write_tokens(b, tokens, ntokens, h->lit, h->dist);
    }
}

void gf_block_dynamic(gf_huff *h, gf_bits *b, uint32_t *tokens, int ntokens, const uint8_t *input,
                      int input_len)
{
    if (gf_reserve(b, 1024 + 6 * (size_t)ntokens + (size_t)input_len))
        return;
    tokens[ntokens++] = GF_EOB;
    int nlit, ndist;
    count_tokens(h, tokens, ntokens, &nlit, &ndist);
    code_lengths_rle(h, h->lit, nlit, h->dist, ndist);
    build_code(h->clen_freq, GF_NCLEN, 7, h->clen);
    int nclen;
    long size = dynamic_bits(h, h->lit, h->dist, 0, &nclen); /* extra bits not counted */
    long stored = ((long)input_len + 5) * 8;
    if (input_len <= GF_STORE_MAX && stored < size + (size >> 4)) {
        gf_block_stored(b, input, input_len, 0);
        return;
    }
    write_dynamic_header(h, b, nlit, ndist, nclen);
    write_tokens(b, tokens, ntokens, h->lit, h->dist);
}

void gf_block_huff(gf_huff *h, gf_bits *b, const uint8_t *input, int input_len)
{
    if (gf_reserve(b, 1024 + 2 * (size_t)input_len))
        return;
    memset(h->lit_freq, 0, sizeof h->lit_freq);
    for (int i = 0; i < input_len; i++)
        h->lit_freq[input[i]]++;
    h->lit_freq[GF_EOB] = 1;
    /* Go counts one use of distance code 0 (costing its one bit) */
    memset(h->dist_freq, 0, sizeof h->dist_freq);
    h->dist_freq[0] = 1;
    build_code(h->lit_freq, GF_NLIT, 15, h->lit);
    code_lengths_rle(h, h->lit, 257, huff_only_dist, 1);
    build_code(h->clen_freq, GF_NCLEN, 7, h->clen);
    int nclen;
    long size = dynamic_bits(h, h->lit, huff_only_dist, 0, &nclen);
    long stored = ((long)input_len + 5) * 8;
    if (input_len <= GF_STORE_MAX && stored < size + (size >> 4)) {
        gf_block_stored(b, input, input_len, 0);
        return;
    }
    write_dynamic_header(h, b, 257, 1, nclen);
    const gf_code *lit = h->lit;
    for (int i = 0; i < input_len; i++)
        put_code(b, lit[input[i]]);
    put_code(b, lit[GF_EOB]);
}
