/* Go's compress/flate encoder (go1.7 .. go1.26), re-implemented for byte-identical output.
 *
 * The stream is what a Go flate.Writer writes when the whole input arrives through Write and the
 * writer is then closed: every block is non-final, and Close appends an empty final stored block.
 * Processing only ever happens on a full window (or at the end), so the output does not depend
 * on how callers cut the input.
 */
#ifndef CHUNKSTORE_GOFLATE_H
#define CHUNKSTORE_GOFLATE_H

#include <stddef.h>
#include <stdint.h>

/* --- deflate constants (RFC 1951 and Go's choices) --- */
#define GF_WSIZE 32768                /* LZ77 window */
#define GF_WMASK (GF_WSIZE - 1)
#define GF_MIN_MATCH 4                /* shortest match Go emits */
#define GF_MAX_MATCH 258
#define GF_LOOKAHEAD (GF_MIN_MATCH + GF_MAX_MATCH) /* bytes kept ahead while not at the end */
#define GF_MAX_DIST 32768
#define GF_BLOCK_TOKENS 16384         /* tokens per block at levels 2..9 */
#define GF_STORE_MAX 65535            /* largest stored block; block size of levels -2, 0, 1 */
#define GF_HASH_BITS 17
#define GF_HASH_SIZE (1 << GF_HASH_BITS)
#define GF_HASH_REBASE (1 << 24)
#define GF_NLIT 286                   /* literal/length symbols Go counts */
#define GF_NDIST 30
#define GF_NCLEN 19
#define GF_EOB 256

/* level 1 (Snappy-like) table */
#define GF_FAST_BITS 14
#define GF_FAST_SIZE (1 << GF_FAST_BITS)
#define GF_FAST_RESET (INT32_MAX - 2 * GF_STORE_MAX)

#define GF_NO_SKIP INT32_MAX

/* A token: a literal byte (or GF_EOB), or a match flagged by the top bit with
 * (length - 3) in bits 16..23 and (distance - 1) in bits 0..15. */
#define GF_TOK_MATCH 0x80000000u
#define GF_MATCH_TOKEN(len, dist) \
    (GF_TOK_MATCH | ((uint32_t)((len) - 3) << 16) | (uint32_t)((dist) - 1))

typedef struct {
    uint16_t code; /* bit-reversed, ready to be written LSB first */
    uint8_t len;
} gf_code;

/* Output: a growing byte buffer fed by a 64-bit accumulator. */
typedef struct {
    uint8_t *buf;
    size_t len, cap;
    uint64_t acc;
    unsigned nacc;
    int failed; /* an allocation failed */
} gf_bits;

typedef struct {
    int32_t lit_freq[GF_NLIT];
    int32_t dist_freq[GF_NDIST];
    int32_t clen_freq[GF_NCLEN];
    gf_code lit[GF_NLIT];
    gf_code dist[GF_NDIST];
    gf_code clen[GF_NCLEN];
    /* run-length coded code lengths: symbol, then its extra value for 16/17/18 */
    uint8_t rle[2 * (GF_NLIT + GF_NDIST) + 2];
    int nrle;
} gf_huff;

typedef struct {
    uint32_t val;
    int32_t pos;
} gf_fast_entry;

typedef struct gf_state {
    int level; /* -2, 0..9 (-1 is stored as 6) */
    int good, lazy, nice, chain, skip;

    uint8_t *window;
    int win_size; /* 2*GF_WSIZE for levels 2..9, GF_STORE_MAX otherwise */
    int win_end;

    /* levels 2..9 */
    int index;
    int block_start;
    int byte_avail;
    int cur_len, cur_dist; /* match found at the previous position (lazy levels) */
    int chain_head;
    int hash_offset;
    int max_insert;
    uint32_t *head; /* GF_HASH_SIZE */
    uint32_t *prev; /* GF_WSIZE */

    /* tokens of the current block */
    uint32_t *tokens;
    int ntokens;

    /* level 1 */
    gf_fast_entry *fast_table; /* GF_FAST_SIZE */
    uint8_t *fast_prev;        /* previous block, GF_STORE_MAX */
    int fast_prev_len;
    int32_t fast_cur;

    gf_huff huff;
    gf_bits out;
    int finished;
} gf_state;

/* lifecycle; gf_new returns NULL when out of memory (level must be valid: -2..9) */
gf_state *gf_new(int level);
void gf_free(gf_state *s);
int gf_level_valid(int level);

/* Feed input / end the stream. Output accumulates in s->out (buf[0:len]); the caller takes it
 * and resets out.len. Both return 0, or -1 when memory ran out (the state is then unusable). */
int gf_write(gf_state *s, const uint8_t *data, size_t len);
int gf_finish(gf_state *s);

/* --- internal: huffman.c --- */
void gf_tables_init(void);
int gf_reserve(gf_bits *b, size_t extra);
void gf_put(gf_bits *b, uint32_t value, unsigned nbits);
void gf_align(gf_bits *b);
/* a stored block header (BFINAL as given), data copied when data != NULL */
void gf_block_stored(gf_bits *b, const uint8_t *data, int len, int final);
/* levels 2..9: fixed, dynamic or stored, whichever Go's size rules pick; input may be NULL */
void gf_block_tokens(gf_huff *h, gf_bits *b, uint32_t *tokens, int ntokens, const uint8_t *input,
                     int input_len, int have_input);
/* level 1: dynamic, or stored when that is not 1/16 smaller */
void gf_block_dynamic(gf_huff *h, gf_bits *b, uint32_t *tokens, int ntokens, const uint8_t *input,
                      int input_len);
/* levels -2 and 1: literals only */
void gf_block_huff(gf_huff *h, gf_bits *b, const uint8_t *input, int input_len);

/* --- internal: lz.c --- */
int gf_fast_encode(gf_state *s, const uint8_t *src, int n); /* fills s->tokens, returns count */
void gf_fast_forget(gf_state *s);

#endif
