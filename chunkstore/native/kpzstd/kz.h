/* kpzstd: a zstd frame writer that makes the same bytes as klauspost compress/zstd 1.15.12's
 * streaming Encoder (SpeedDefault: the "double fast" match finder) fed the way containers/image
 * feeds it. See enc.c for the model; the Python binding is ../_kpzstd.c. */
#ifndef KPZSTD_KZ_H
#define KPZSTD_KZ_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *p;
    size_t len, cap;
    int oom;
} kz_buf;

typedef struct kz_enc kz_enc;

#define KZ_LEVEL_FASTEST 1
#define KZ_LEVEL_DEFAULT 2

/* A new encoder (NULL when out of memory). prefix: the producer hands the first `prefix` bytes
 * to the Go writer on their own and then flushes them as a block (containers/image: 8); 0 is
 * not supported. */
kz_enc *kz_new(int level, size_t prefix);
void kz_free(kz_enc *e);
/* Feed input; finished output is appended to out. Returns 0, or -1 when out of memory. */
int kz_feed(kz_enc *e, const uint8_t *p, size_t n, kz_buf *out);
int kz_end(kz_enc *e, kz_buf *out);

int kz_buf_reserve(kz_buf *b, size_t extra);
void kz_buf_free(kz_buf *b);

#endif
