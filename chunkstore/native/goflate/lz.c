/* Match finding for the Go flate re-implementation: the hash-chain matcher of levels 2..9 (greedy
 * with partial insertion at 2 and 3, lazy at 4..9), the Snappy-like single-probe matcher of
 * level 1, the block cadence of every level, and the stream's start and end. */
#include "goflate.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int good, lazy, nice, chain, skip;
} level_params;

/* good is carried for completeness: Go compares it with the length it starts each search at
 * (3), which is below every level's value, so the chain is never shortened by it. */
static const level_params PARAMS[10] = {
    {0, 0, 0, 0, 0},           {0, 0, 0, 0, 0},           {4, 0, 16, 8, 5},
    {4, 0, 32, 32, 6},         {4, 4, 16, 16, GF_NO_SKIP}, {8, 16, 32, 32, GF_NO_SKIP},
    {8, 16, 128, 128, GF_NO_SKIP}, {8, 32, 128, 256, GF_NO_SKIP}, {32, 128, 258, 1024, GF_NO_SKIP},
    {32, 258, 258, 4096, GF_NO_SKIP},
};

static inline uint32_t rd32le(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t rd64le(const uint8_t *p)
{
    return (uint64_t)rd32le(p) | (uint64_t)rd32le(p + 4) << 32;
}

/* number of equal leading bytes of a and b, at most max */
static inline int common_prefix(const uint8_t *a, const uint8_t *b, int max)
{
    int n = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    while (n + 8 <= max) {
        uint64_t x, y;
        memcpy(&x, a + n, 8);
        memcpy(&y, b + n, 8);
        if (x != y)
            return n + (__builtin_ctzll(x ^ y) >> 3);
        n += 8;
    }
#endif
    while (n < max && a[n] == b[n])
        n++;
    return n;
}

/* ------------------------------------------------------------ levels 2..9 */

static inline uint32_t chain_hash(const uint8_t *p)
{
    uint32_t be = (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
    return (be * 0x1e35a7bdu) >> (32 - GF_HASH_BITS);
}

/* link position pos into its hash chain; returns the previous head of that chain */
static inline uint32_t chain_insert(gf_state *s, int pos)
{
    uint32_t *slot = &s->head[chain_hash(s->window + pos)];
    uint32_t before = *slot;
    s->prev[pos & GF_WMASK] = before;
    *slot = (uint32_t)(pos + s->hash_offset);
    return before;
}

/* Longest match for pos along the chain starting at cand, longer than 3 bytes (4-byte matches
 * only within 4096 bytes). Returns its length, or 0 when there is none. */
static int chain_search(const gf_state *s, int pos, int cand, int lookahead, int *dist)
{
    const uint8_t *w = s->window;
    int limit = lookahead < GF_MAX_MATCH ? lookahead : GF_MAX_MATCH;
    int enough = s->nice < limit ? s->nice : limit;
    int oldest = pos - GF_WSIZE;
    int best = GF_MIN_MATCH - 1;
    int found = 0;
    uint8_t tail = w[pos + best];
    const uint8_t *here = w + pos;
    for (int left = s->chain, i = cand; left > 0; left--) {
        if (w[i + best] == tail) {
            int n = common_prefix(w + i, here, limit);
            if (n > best && (n > GF_MIN_MATCH || pos - i <= 4096)) {
                best = n;
                *dist = pos - i;
                found = 1;
                if (n >= enough)
                    break;
                tail = w[pos + n];
            }
        }
        if (i == oldest)
            break; /* its chain link was reused by pos itself */
        i = (int)s->prev[i & GF_WMASK] - s->hash_offset;
        if (i < oldest || i < 0)
            break;
    }
    return found ? best : 0;
}

static void lz_flush_block(gf_state *s, int end)
{
    if (end > 0) {
        int have = s->block_start <= end;
        gf_block_tokens(&s->huff, &s->out, s->tokens, s->ntokens,
                        have ? s->window + s->block_start : NULL,
                        have ? end - s->block_start : 0, have);
        s->block_start = end;
    }
    s->ntokens = 0;
}

static void lz_slide(gf_state *s)
{
    memcpy(s->window, s->window + GF_WSIZE, GF_WSIZE);
    s->index -= GF_WSIZE;
    s->win_end -= GF_WSIZE;
    s->block_start = s->block_start >= GF_WSIZE ? s->block_start - GF_WSIZE : INT_MAX;
    s->hash_offset += GF_WSIZE;
    if (s->hash_offset > GF_HASH_REBASE) {
        /* keep chain positions small: rebase them so that hash_offset is 1 again */
        int delta = s->hash_offset - 1;
        s->hash_offset -= delta;
        s->chain_head -= delta;
        for (int i = 0; i < GF_WSIZE; i++)
            s->prev[i] = (int)s->prev[i] > delta ? s->prev[i] - (uint32_t)delta : 0;
        for (int i = 0; i < GF_HASH_SIZE; i++)
            s->head[i] = (int)s->head[i] > delta ? s->head[i] - (uint32_t)delta : 0;
    }
}

/* levels 4..9: a match is emitted only once the next position offers no longer one */
static void lz_run_lazy(gf_state *s, int at_end)
{
    if (!at_end && s->win_end - s->index < GF_LOOKAHEAD)
        return;
    const uint8_t *w = s->window;
    s->max_insert = s->win_end - (GF_MIN_MATCH - 1);
    for (;;) {
        int lookahead = s->win_end - s->index;
        if (lookahead < GF_LOOKAHEAD) {
            if (!at_end)
                return;
            if (lookahead == 0) {
                if (s->byte_avail) {
                    s->tokens[s->ntokens++] = w[s->index - 1];
                    s->byte_avail = 0;
                }
                if (s->ntokens > 0)
                    lz_flush_block(s, s->index);
                return;
            }
        }
        if (s->index < s->max_insert)
            s->chain_head = (int)chain_insert(s, s->index);
        int pending_len = s->cur_len, pending_dist = s->cur_dist;
        s->cur_len = GF_MIN_MATCH - 1;
        s->cur_dist = 0;
        int oldest = s->index - GF_WSIZE;
        if (oldest < 0)
            oldest = 0;
        int cand = s->chain_head - s->hash_offset;
        if (cand >= oldest && lookahead > pending_len && pending_len < s->lazy) {
            int dist = 0;
            int n = chain_search(s, s->index, cand, lookahead, &dist);
            if (n) {
                s->cur_len = n;
                s->cur_dist = dist;
            }
        }
        if (pending_len >= GF_MIN_MATCH && s->cur_len <= pending_len) {
            /* the match that started one byte back wins */
            s->tokens[s->ntokens++] = GF_MATCH_TOKEN(pending_len, pending_dist);
            int stop = s->index + pending_len - 1;
            int upto = stop < s->max_insert ? stop : s->max_insert;
            for (int p = s->index + 1; p < upto; p++)
                chain_insert(s, p);
            s->index = stop;
            s->byte_avail = 0;
            s->cur_len = GF_MIN_MATCH - 1;
            if (s->ntokens == GF_BLOCK_TOKENS)
                lz_flush_block(s, s->index);
        } else {
            if (s->byte_avail) {
                s->tokens[s->ntokens++] = w[s->index - 1];
                if (s->ntokens == GF_BLOCK_TOKENS)
                    lz_flush_block(s, s->index);
            }
            s->index++;
            s->byte_avail = 1;
        }
    }
}

/* levels 2 and 3: take the first acceptable match; long ones are not hashed inside */
static void lz_run_greedy(gf_state *s, int at_end)
{
    if (!at_end && s->win_end - s->index < GF_LOOKAHEAD)
        return;
    const uint8_t *w = s->window;
    s->max_insert = s->win_end - (GF_MIN_MATCH - 1);
    for (;;) {
        int lookahead = s->win_end - s->index;
        if (lookahead < GF_LOOKAHEAD) {
            if (!at_end)
                return;
            if (lookahead == 0) {
                if (s->ntokens > 0)
                    lz_flush_block(s, s->index);
                return;
            }
        }
        if (s->index < s->max_insert)
            s->chain_head = (int)chain_insert(s, s->index);
        int len = 0, dist = 0;
        int oldest = s->index - GF_WSIZE;
        if (oldest < 0)
            oldest = 0;
        int cand = s->chain_head - s->hash_offset;
        if (cand >= oldest && lookahead > GF_MIN_MATCH - 1)
            len = chain_search(s, s->index, cand, lookahead, &dist);
        if (len >= GF_MIN_MATCH) {
            s->tokens[s->ntokens++] = GF_MATCH_TOKEN(len, dist);
            int stop = s->index + len;
            if (len <= s->skip) {
                int upto = stop < s->max_insert ? stop : s->max_insert;
                for (int p = s->index + 1; p < upto; p++)
                    chain_insert(s, p);
            }
            s->index = stop;
            if (s->ntokens == GF_BLOCK_TOKENS)
                lz_flush_block(s, s->index);
        } else {
            s->tokens[s->ntokens++] = w[s->index];
            s->index++;
            if (s->ntokens == GF_BLOCK_TOKENS)
                lz_flush_block(s, s->index);
        }
    }
}

/* ------------------------------------------------------------ level 1 */

#define FAST_TAIL 15 /* bytes at the end of a block never searched from */

static inline uint32_t fast_hash(uint32_t v)
{
    return (v * 0x1e35a7bdu) >> (32 - GF_FAST_BITS);
}

static void fast_rebase(gf_state *s)
{
    if (s->fast_prev_len == 0) {
        memset(s->fast_table, 0, GF_FAST_SIZE * sizeof(gf_fast_entry));
    } else {
        for (int i = 0; i < GF_FAST_SIZE; i++) {
            int32_t v = s->fast_table[i].pos - s->fast_cur + GF_MAX_DIST + 1;
            s->fast_table[i].pos = v < 0 ? 0 : v;
        }
    }
    s->fast_cur = GF_MAX_DIST + 1;
}

/* forget the previous block (Go does this after a tiny final block) */
void gf_fast_forget(gf_state *s)
{
    s->fast_prev_len = 0;
    s->fast_cur += GF_MAX_DIST;
    if (s->fast_cur >= GF_FAST_RESET)
        fast_rebase(s);
}

/* Length of the match beyond the 4 bytes already known equal: src[a..] against src[b..],
 * where b < 0 points into the previous block. */
static int fast_extend(const gf_state *s, const uint8_t *src, int n, int a, int b)
{
    int end = a + GF_MAX_MATCH - 4;
    if (end > n)
        end = n;
    if (b >= 0)
        return common_prefix(src + a, src + b, end - a);
    int pb = s->fast_prev_len + b;
    if (pb < 0)
        return 0;
    int span = end - a;
    int in_prev = s->fast_prev_len - pb;
    if (in_prev > span)
        in_prev = span;
    int m = common_prefix(src + a, s->fast_prev + pb, in_prev);
    if (m < in_prev || a + m == end)
        return m;
    /* ran off the end of the previous block: go on at the start of this one */
    return m + common_prefix(src + a + m, src, end - a - m);
}

static inline void fast_literals(gf_state *s, const uint8_t *p, int count)
{
    uint32_t *t = s->tokens + s->ntokens;
    for (int i = 0; i < count; i++)
        t[i] = p[i];
    s->ntokens += count;
}

int gf_fast_encode(gf_state *s, const uint8_t *src, int n)
{
    gf_fast_entry *table = s->fast_table;
    s->ntokens = 0;
    if (s->fast_cur >= GF_FAST_RESET)
        fast_rebase(s);
    if (n < FAST_TAIL + 2) {
        s->fast_cur += GF_STORE_MAX;
        s->fast_prev_len = 0;
        fast_literals(s, src, n);
        return s->ntokens;
    }
    const int32_t last = n - FAST_TAIL;
    const int32_t cur = s->fast_cur;
    int32_t pos = 0, emitted = 0;
    uint32_t word = rd32le(src);
    uint32_t h = fast_hash(word);
    gf_fast_entry cand;
    for (;;) {
        /* probe forward, stepping further the longer nothing matches */
        int32_t skip = 32, next = pos;
        for (;;) {
            pos = next;
            int32_t stride = skip >> 5;
            next = pos + stride;
            skip += stride;
            if (next > last)
                goto tail;
            cand = table[h];
            uint32_t ahead = rd32le(src + next);
            table[h].val = word;
            table[h].pos = pos + cur;
            h = fast_hash(ahead);
            if (pos - (cand.pos - cur) <= GF_MAX_DIST && word == cand.val)
                break;
            word = ahead;
        }
        fast_literals(s, src + emitted, pos - emitted);
        for (;;) {
            /* 4 bytes match at pos: extend, emit, then try again right after */
            pos += 4;
            int32_t from = cand.pos - cur + 4;
            int32_t more = fast_extend(s, src, n, pos, from);
            s->tokens[s->ntokens++] = GF_MATCH_TOKEN(more + 4, pos - from);
            pos += more;
            emitted = pos;
            if (pos >= last)
                goto tail;
            uint64_t x = rd64le(src + pos - 1);
            uint32_t h0 = fast_hash((uint32_t)x);
            table[h0].val = (uint32_t)x;
            table[h0].pos = cur + pos - 1;
            x >>= 8;
            uint32_t h1 = fast_hash((uint32_t)x);
            cand = table[h1];
            table[h1].val = (uint32_t)x;
            table[h1].pos = cur + pos;
            if (pos - (cand.pos - cur) > GF_MAX_DIST || (uint32_t)x != cand.val) {
                word = (uint32_t)(x >> 8);
                h = fast_hash(word);
                pos++;
                break;
            }
        }
    }
tail:
    if (emitted < n)
        fast_literals(s, src + emitted, n - emitted);
    s->fast_cur += n;
    memcpy(s->fast_prev, src, (size_t)n);
    s->fast_prev_len = n;
    return s->ntokens;
}

/* ------------------------------------------------------------ stream */

int gf_level_valid(int level)
{
    return level >= -2 && level <= 9;
}

static int is_lz(const gf_state *s)
{
    return s->level >= 2;
}

gf_state *gf_new(int level)
{
    gf_tables_init();
    if (level == -1)
        level = 6;
    gf_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->level = level;
    if (level >= 2) {
        const level_params *p = &PARAMS[level];
        s->good = p->good;
        s->lazy = p->lazy;
        s->nice = p->nice;
        s->chain = p->chain;
        s->skip = p->skip;
        s->win_size = 2 * GF_WSIZE;
        s->head = calloc(GF_HASH_SIZE, sizeof(uint32_t));
        s->prev = calloc(GF_WSIZE, sizeof(uint32_t));
        s->tokens = malloc((GF_BLOCK_TOKENS + 2) * sizeof(uint32_t));
        s->hash_offset = 1;
        s->chain_head = -1;
        s->cur_len = GF_MIN_MATCH - 1;
        if (!s->head || !s->prev || !s->tokens)
            goto fail;
    } else {
        s->win_size = GF_STORE_MAX;
        if (level == 1) {
            s->tokens = malloc((GF_STORE_MAX + 2) * sizeof(uint32_t));
            s->fast_table = calloc(GF_FAST_SIZE, sizeof(gf_fast_entry));
            s->fast_prev = malloc(GF_STORE_MAX);
            s->fast_cur = GF_STORE_MAX;
            if (!s->tokens || !s->fast_table || !s->fast_prev)
                goto fail;
        }
    }
    s->window = malloc((size_t)s->win_size);
    if (!s->window)
        goto fail;
    return s;
fail:
    gf_free(s);
    return NULL;
}

void gf_free(gf_state *s)
{
    if (!s)
        return;
    free(s->window);
    free(s->head);
    free(s->prev);
    free(s->tokens);
    free(s->fast_table);
    free(s->fast_prev);
    free(s->out.buf);
    free(s);
}

/* encode what the window holds: all of it at the end, otherwise only a full window */
static void run(gf_state *s, int at_end)
{
    switch (s->level) {
    case 0:
        if (s->win_end > 0 && (s->win_end == GF_STORE_MAX || at_end)) {
            gf_block_stored(&s->out, s->window, s->win_end, 0);
            s->win_end = 0;
        }
        return;
    case -2:
        if (s->win_end > 0 && (s->win_end == GF_STORE_MAX || at_end)) {
            gf_block_huff(&s->huff, &s->out, s->window, s->win_end);
            s->win_end = 0;
        }
        return;
    case 1: {
        int n = s->win_end;
        if (n < GF_STORE_MAX) {
            if (!at_end || n == 0)
                return;
            if (n < 128) {
                if (n <= 16)
                    gf_block_stored(&s->out, s->window, n, 0);
                else
                    gf_block_huff(&s->huff, &s->out, s->window, n);
                s->win_end = 0;
                gf_fast_forget(s);
                return;
            }
        }
        int nt = gf_fast_encode(s, s->window, n);
        if (nt > n - (n >> 4))
            gf_block_huff(&s->huff, &s->out, s->window, n);
        else
            gf_block_dynamic(&s->huff, &s->out, s->tokens, nt, s->window, n);
        s->ntokens = 0;
        s->win_end = 0;
        return;
    }
    case 2:
    case 3:
        lz_run_greedy(s, at_end);
        return;
    default:
        lz_run_lazy(s, at_end);
        return;
    }
}

int gf_write(gf_state *s, const uint8_t *data, size_t len)
{
    while (len > 0 && !s->out.failed) {
        if (is_lz(s) && s->index >= 2 * GF_WSIZE - GF_LOOKAHEAD)
            lz_slide(s);
        size_t room = (size_t)(s->win_size - s->win_end);
        size_t n = len < room ? len : room;
        memcpy(s->window + s->win_end, data, n);
        s->win_end += (int)n;
        data += n;
        len -= n;
        if (s->win_end == s->win_size)
            run(s, 0);
    }
    return s->out.failed ? -1 : 0;
}

int gf_finish(gf_state *s)
{
    run(s, 1);
    gf_block_stored(&s->out, NULL, 0, 1);
    s->finished = 1;
    return s->out.failed ? -1 : 0;
}
