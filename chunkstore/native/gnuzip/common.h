/* Shared pieces of the gnuzip native module: a growable output buffer and the encoder interface
 * the Python binding (_gnuzip.c) drives. */
#ifndef CHUNKSTORE_GNUZIP_COMMON_H
#define CHUNKSTORE_GNUZIP_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Bytes produced and not yet handed to the caller. `failed` is sticky: set once an allocation
 * fails, after which the encoder must not be used any more. */
typedef struct gz_out {
    uint8_t *data;
    size_t len;
    size_t cap;
    int failed;
} gz_out;

static inline int gz_out_reserve(gz_out *o, size_t extra) {
    if (o->failed)
        return -1;
    if (o->cap - o->len >= extra)
        return 0;
    size_t want = o->cap ? o->cap : 4096;
    while (want - o->len < extra) {
        if (want > SIZE_MAX / 2) {
            o->failed = 1;
            return -1;
        }
        want *= 2;
    }
    uint8_t *p = realloc(o->data, want);
    if (p == NULL) {
        o->failed = 1;
        return -1;
    }
    o->data = p;
    o->cap = want;
    return 0;
}

static inline void gz_out_put(gz_out *o, const uint8_t *src, size_t n) {
    if (gz_out_reserve(o, n) == 0) {
        memcpy(o->data + o->len, src, n);
        o->len += n;
    }
}

static inline void gz_out_release(gz_out *o) {
    free(o->data);
    o->data = NULL;
    o->len = o->cap = 0;
}

/* ---- GNU gzip 1.12 deflate (gnudeflate.c) ---- */
typedef struct gd_state gd_state;
/* NULL when out of memory; level 1..9 (the caller checks the range). */
gd_state *gd_create(int level, int rsyncable);
void gd_destroy(gd_state *s);
/* Consume `len` bytes; with `final` set, end the stream after them. Output goes to gd_output().
 * Returns 0, or -1 when out of memory. */
int gd_feed(gd_state *s, const uint8_t *data, size_t len, int final);
gz_out *gd_output(gd_state *s);

/* ---- pigz 2.6 over zlib (pigz.c) ---- */
typedef struct pz_state pz_state;
/* NULL when out of memory or when zlib refuses the settings. */
pz_state *pz_create(int level, size_t block_size, int independent, int serial, int rsyncable,
                    int threads);
void pz_destroy(pz_state *s);
int pz_feed(pz_state *s, const uint8_t *data, size_t len, int final);
gz_out *pz_output(pz_state *s);

#endif
