/* One klauspost flate stream: input is gathered into a window and coded when the window is full
 * and more input arrives, or on flush / close. Which blocks come out depends only on the bytes,
 * never on how they were handed over.
 *
 *   level  window            per full window
 *    -2    32 KiB            literal-only Huffman block (or stored)
 *     0    65535 bytes       stored block
 *   1..6   65535 bytes       fast matcher, then stored / literal-only / dynamic
 *   7..9   64 KiB sliding    lazy matcher, a block per 32768 tokens
 */
#include <stdlib.h>

#include "kp.h"

kp_stream *kp_stream_new(int level) {
    if (level == -1) level = 5;
    if (level < -2 || level > 9) return NULL;
    kp_stream *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->level = level;
    s->tok.v = malloc(sizeof(uint32_t) * KP_TOKCAP);
    int ok = s->tok.v != NULL;
    if (level >= 7) {
        s->lazy = kp_lazy_new(level);
        ok = ok && s->lazy;
        s->bw.penalty = 8;
    } else {
        s->wcap = level == -2 ? KP_WSIZE : KP_CHUNK;
        s->win = malloc(s->wcap);
        ok = ok && s->win;
        if (level >= 1) {
            s->fast = kp_fast_new(level);
            ok = ok && s->fast;
        }
        s->bw.penalty = level == -2 ? 10 : level >= 1 ? 7 : 0;
    }
    if (!ok) {
        kp_stream_free(s);
        return NULL;
    }
    kp_bw_reset(&s->bw, NULL);
    return s;
}

void kp_stream_free(kp_stream *s) {
    if (!s) return;
    free(s->tok.v);
    free(s->win);
    kp_fast_free(s->fast);
    kp_lazy_free(s->lazy);
    free(s);
}

static void code_window(kp_stream *s) {
    kp_bw *w = &s->bw;
    size_t n = s->wend;
    if (s->level == 0) {
        if (n > 0 && (n == s->wcap || s->sync)) {
            kp_bw_stored_header(w, n, 0);
            kp_bw_raw(w, s->win, n);
            s->wend = 0;
        }
        return;
    }
    if (s->level == -2) {
        if ((n < s->wcap && !s->sync) || n == 0) return;
        kp_bw_literals(w, 0, s->win, n, s->sync);
        s->wend = 0;
        return;
    }
    if (n < s->wcap) {
        if (!s->sync) return;
        if (n < 128) { /* tiny tail: no search, and the history is dropped */
            if (n == 0) return;
            if (n <= 32) {
                kp_bw_stored_header(w, n, 0);
                kp_bw_raw(w, s->win, n);
            } else {
                kp_bw_literals(w, 0, s->win, n, 1);
            }
            kp_tok_clear(&s->tok);
            s->wend = 0;
            kp_fast_reset(s->fast);
            return;
        }
    }
    kp_fast_encode(s->fast, &s->tok, s->win, (int32_t)n);
    if (s->tok.n == 0) {
        kp_bw_stored_header(w, n, 0);
        kp_bw_raw(w, s->win, n);
    } else if (s->tok.n > n - (n >> 4)) { /* matches removed under 1/16: literals only */
        kp_bw_literals(w, 0, s->win, n, s->sync);
    } else {
        kp_bw_dynamic(w, &s->tok, 0, s->win, n, 1, s->sync);
    }
    kp_tok_clear(&s->tok);
    s->wend = 0;
}

static void step(kp_stream *s) {
    if (s->lazy) kp_lazy_step(s->lazy, s);
    else code_window(s);
}

void kp_stream_reset(kp_stream *s, kp_buf *out, const uint8_t *dict, size_t dlen) {
    kp_bw_reset(&s->bw, out);
    s->sync = 0;
    s->tok.n = 1; /* force a full clear */
    kp_tok_clear(&s->tok);
    s->wend = 0;
    if (s->fast) kp_fast_reset(s->fast);
    if (s->lazy) kp_lazy_reset(s->lazy);
    if (s->level <= 0 || !dict || !dlen) return;
    if (s->fast) { /* run the matcher over the dictionary's last 32 KiB, discarding its tokens */
        if (dlen > KP_WSIZE) {
            dict += dlen - KP_WSIZE;
            dlen = KP_WSIZE;
        }
        kp_fast_encode(s->fast, &s->tok, dict, (int32_t)dlen);
        kp_tok_clear(&s->tok);
    } else {
        kp_lazy_dict(s->lazy, dict, dlen);
    }
}

void kp_stream_write(kp_stream *s, const uint8_t *p, size_t n) {
    while (n > 0) {
        if (s->lazy) {
            if (kp_lazy_full(s->lazy)) step(s);
            size_t k = kp_lazy_fill(s->lazy, p, n);
            p += k;
            n -= k;
        } else {
            if (s->wend == s->wcap) step(s);
            size_t k = s->wcap - s->wend;
            if (k > n) k = n;
            memcpy(s->win + s->wend, p, k);
            s->wend += k;
            p += k;
            n -= k;
        }
    }
}

void kp_stream_flush(kp_stream *s) {
    s->sync = 1;
    step(s);
    kp_bw_stored_header(&s->bw, 0, 0);
    kp_bw_align(&s->bw);
    s->sync = 0;
}

void kp_stream_close(kp_stream *s) {
    s->sync = 1;
    step(s);
    kp_bw_stored_header(&s->bw, 0, 1);
    kp_bw_align(&s->bw);
    s->bw.open_hdr = 0;
    s->bw.open_litonly = 0;
}
