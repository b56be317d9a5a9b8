/* Match finders of levels 1..6: greedy, snappy-like searches over hash tables of positions.
 *
 * Each call encodes one chunk (at most 65535 bytes) appended to a history buffer holding earlier
 * chunks, so matches reach back into previous chunks (and into a preset dictionary). Table values
 * are positions plus a running offset `cur`: moving the history or starting over only changes
 * `cur`, which puts every old value out of reach (at least 32 KiB behind) without clearing the
 * tables. Entries are only trusted after the distance check, exactly as klauspost checks them.
 *
 * Level  table(s)                                   hashed bytes  search skip
 *   1    32K single                                 5             2 + gap/32
 *   2    128K single                                5             2 + gap/32
 *   3    64K pairs (newest, previous)               5             1 + gap/128
 *   4    32K short + 32K long, single               4 / 7         1 + gap/64
 *   5    32K short single + 32K long pairs          4 / 7         1 + gap/64
 *   6    as 5, plus a repeat-offset probe           4 / 7         1 + gap/128
 */
#include <stdlib.h>

#include "kp.h"

#define MAXD KP_WSIZE                              /* a match's distance must stay below this */
#define HIST_CAP (KP_CHUNK * 5)                    /* history kept before moving it down */
#ifndef KP_TEST_CUR_LIMIT /* tests lower it to exercise renumbering */
#define CUR_LIMIT ((int32_t)(2147483647 - HIST_CAP - KP_CHUNK)) /* renumber before overflow */
#else
#define CUR_LIMIT KP_TEST_CUR_LIMIT
#endif
#define MARGIN 11                                  /* no match search in the last 11 bytes */

static inline uint32_t hash4(uint64_t u, int bits) {
    return ((uint32_t)u * 2654435761u) >> (32 - bits);
}
static inline uint32_t hash5(uint64_t u, int bits) {
    return (uint32_t)(((u << 24) * 889523592379ull) >> (64 - bits));
}
static inline uint32_t hash7(uint64_t u, int bits) {
    return (uint32_t)(((u << 8) * 58295818150454627ull) >> (64 - bits));
}

static int32_t t1_size(int level) {
    switch (level) {
    case 1: return 1 << 15;
    case 2: return 1 << 17;
    case 4: case 5: case 6: return 1 << 15;
    default: return 0;
    }
}
static int32_t tp_size(int level) {
    return level == 3 ? 1 << 16 : (level == 5 || level == 6) ? 1 << 15 : 0;
}

kp_fast *kp_fast_new(int level) {
    kp_fast *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->level = level;
    e->cur = KP_CHUNK;
    e->hist = malloc(HIST_CAP + 16);
    int32_t n1 = t1_size(level), np = tp_size(level);
    e->t1 = n1 ? calloc((size_t)n1, sizeof(int32_t)) : NULL;
    e->t2 = level == 4 ? calloc(1 << 15, sizeof(int32_t)) : NULL;
    e->tp = np ? calloc((size_t)np, sizeof(kp_pair)) : NULL;
    if (!e->hist || (n1 && !e->t1) || (level == 4 && !e->t2) || (np && !e->tp)) {
        kp_fast_free(e);
        return NULL;
    }
    return e;
}

void kp_fast_free(kp_fast *e) {
    if (!e) return;
    free(e->hist);
    free(e->t1);
    free(e->t2);
    free(e->tp);
    free(e);
}

void kp_fast_reset(kp_fast *e) {
    if (e->cur <= CUR_LIMIT) e->cur += MAXD + e->hlen;
    e->hlen = 0;
}

static inline int32_t shift_one(int32_t v, int32_t lo, int32_t cur) {
    return v <= lo ? 0 : v - cur + MAXD;
}

/* Before `cur` can overflow: renumber what is still reachable, forget the rest. */
static void renumber(kp_fast *e) {
    int32_t n1 = t1_size(e->level), np = tp_size(e->level);
    while (e->cur >= CUR_LIMIT) {
        if (e->hlen == 0) {
            if (e->t1) memset(e->t1, 0, sizeof(int32_t) * (size_t)n1);
            if (e->t2) memset(e->t2, 0, sizeof(int32_t) << 15);
            if (e->tp) memset(e->tp, 0, sizeof(kp_pair) * (size_t)np);
            e->cur = MAXD;
            break;
        }
        int32_t lo = e->cur + e->hlen - MAXD;
        for (int32_t i = 0; i < n1; i++) e->t1[i] = shift_one(e->t1[i], lo, e->cur);
        if (e->t2)
            for (int32_t i = 0; i < (1 << 15); i++) e->t2[i] = shift_one(e->t2[i], lo, e->cur);
        for (int32_t i = 0; i < np; i++) {
            kp_pair *p = &e->tp[i];
            if (e->level == 3) {
                p->cur = shift_one(p->cur, lo, e->cur);
                p->prev = shift_one(p->prev, lo, e->cur);
            } else if (p->cur <= lo) { /* levels 5, 6 drop both when the newest is gone */
                p->cur = p->prev = 0;
            } else {
                p->cur = p->cur - e->cur + MAXD;
                p->prev = shift_one(p->prev, lo, e->cur);
            }
        }
        e->cur = MAXD;
    }
}

/* Append src to the history (keeping the last 32 KiB when full); returns where it starts. */
static int32_t append(kp_fast *e, const uint8_t *src, int32_t n) {
    if (e->hlen + n > HIST_CAP) {
        int32_t drop = e->hlen - MAXD;
        memmove(e->hist, e->hist + drop, MAXD);
        e->cur += drop;
        e->hlen = MAXD;
    }
    int32_t s = e->hlen;
    memcpy(e->hist + s, src, (size_t)n);
    e->hlen += n;
    return s;
}

static inline void lits(kp_tokens *t, const uint8_t *h, int32_t from, int32_t to) {
    for (int32_t i = from; i < to; i++) kp_tok_lit(t, h[i]);
}

/* Longest common run of h[a..end) and h[b..): both forward from a > b. */
static inline int32_t run_to_end(const kp_fast *e, int32_t a, int32_t b) {
    return kp_common(e->hist + a, e->hist + b, e->hlen - a);
}
/* The same, but comparing at most 254 bytes (a match found this way is then at most 258). */
static inline int32_t run_capped(const kp_fast *e, int32_t a, int32_t b) {
    int32_t n = e->hlen - a;
    if (n > 254) n = 254;
    return kp_common(e->hist + a, e->hist + b, n);
}

/* Grow a match backwards over bytes not yet emitted. */
#define EXTEND_BACK(h, s, t, l, emitted)                                                        \
    while ((t) > 0 && (s) > (emitted) && (h)[(t) - 1] == (h)[(s) - 1]) {                         \
        (s)--;                                                                                   \
        (t)--;                                                                                   \
        (l)++;                                                                                   \
    }

/* ------------------------------------------------------------------ level 1 and 2 */

static void enc12(kp_fast *e, kp_tokens *dst, int32_t s, int bits, int dense) {
    const uint8_t *h = e->hist;
    int32_t *T = e->t1, cur = e->cur;
    int32_t emitted = s, limit = e->hlen - MARGIN, len = e->hlen;
    uint64_t cv = kp_ld64(h + s);
    int32_t next = s;
    int32_t cand;
    for (;;) {
        /* look for a 4-byte match, testing two positions per round */
        for (;;) {
            uint32_t hv = hash5(cv, bits);
            if (dense) s = next;
            cand = T[hv];
            next = s + 2 + ((s - emitted) >> 5);
            if (next > limit) goto tail;
            uint64_t ahead = kp_ld64(h + next);
            T[hv] = s + cur;
            hv = hash5(ahead, bits);
            if (s - (cand - cur) < MAXD && (uint32_t)cv == kp_ld32(h + cand - cur)) {
                T[hv] = next + cur;
                break;
            }
            cv = ahead;
            s = next;
            next++;
            cand = T[hv];
            ahead >>= 8;
            T[hv] = s + cur;
            if (s - (cand - cur) < MAXD && (uint32_t)cv == kp_ld32(h + cand - cur)) {
                if (!dense) T[hv] = next + cur;
                break;
            }
            cv = ahead;
            if (!dense) s = next;
        }
        /* emit it and keep matching right after it while we can */
        for (;;) {
            int32_t t = cand - cur;
            int32_t l = 4 + run_to_end(e, s + 4, t + 4);
            EXTEND_BACK(h, s, t, l, emitted);
            lits(dst, h, emitted, s);
            kp_tok_long(dst, l, (uint32_t)(s - t - 1));
            s += l;
            emitted = s;
            if (next >= s) s = next + 1;
            if (s >= limit) {
                if (s + l + 8 < len) T[hash5(kp_ld64(h + s), bits)] = s + cur;
                goto tail;
            }
            if (dense) { /* level 2 indexes the inside of the match too */
                for (int32_t i = s - l + 2; i < s - 5; i += 7) {
                    uint64_t x = kp_ld64(h + i);
                    T[hash5(x, bits)] = cur + i;
                    T[hash5(x >> 16, bits)] = cur + i + 2;
                    T[hash5(x >> 32, bits)] = cur + i + 4;
                }
            }
            uint64_t x = kp_ld64(h + s - 2);
            int32_t o = cur + s - 2;
            T[hash5(x, bits)] = o;
            if (dense) T[hash5(x >> 8, bits)] = o + 1;
            uint32_t hv = hash5(x >> 16, bits);
            cand = T[hv];
            T[hv] = o + 2;
            if (s - (cand - cur) > MAXD || (uint32_t)(x >> 16) != kp_ld32(h + cand - cur)) {
                cv = x >> 24;
                s++;
                break;
            }
        }
        next = s;
    }
tail:
    if (emitted < len && dst->n) lits(dst, h, emitted, len);
}

/* ------------------------------------------------------------------ level 3 */

static inline void push(kp_pair *p, int32_t v) {
    p->prev = p->cur;
    p->cur = v;
}

static void enc3(kp_fast *e, kp_tokens *dst, int32_t s) {
    const uint8_t *h = e->hist;
    kp_pair *T = e->tp;
    int32_t cur = e->cur, emitted = s, limit = e->hlen - MARGIN, len = e->hlen;
    uint64_t cv = kp_ld64(h + s);
    for (;;) {
        int32_t next = s, cand;
        for (;;) {
            uint32_t hv = hash5(cv, 16);
            s = next;
            next = s + 1 + ((s - emitted) >> 7);
            if (next > limit) goto tail;
            kp_pair c = T[hv];
            uint64_t ahead = kp_ld64(h + next);
            int32_t reach = cur + s - (MAXD - 4);
            T[hv].prev = c.cur;
            T[hv].cur = s + cur;
            cand = c.cur;
            if (cand < reach) {
                cv = ahead;
                continue;
            }
            if ((uint32_t)cv == kp_ld32(h + cand - cur)) {
                if (c.prev < reach || (uint32_t)cv != kp_ld32(h + c.prev - cur)) break;
                int32_t l1 = run_to_end(e, s + 4, cand - cur + 4);
                int32_t l2 = run_to_end(e, s + 4, c.prev - cur + 4);
                if (l2 > l1) cand = c.prev;
                break;
            }
            cand = c.prev;
            if (cand > reach && (uint32_t)cv == kp_ld32(h + cand - cur)) break;
            cv = ahead;
        }
        for (;;) {
            int32_t t = cand - cur;
            int32_t l = 4 + run_to_end(e, s + 4, t + 4);
            EXTEND_BACK(h, s, t, l, emitted);
            lits(dst, h, emitted, s);
            kp_tok_long(dst, l, (uint32_t)(s - t - 1));
            s += l;
            emitted = s;
            if (next >= s) s = next + 1;
            if (s >= limit) {
                t += l;
                if (t + 8 < len && t > 0) push(&T[hash5(kp_ld64(h + t), 16)], e->cur + t);
                goto tail;
            }
            for (int32_t i = s - l + 2; i < s - 5; i += 6) push(&T[hash5(kp_ld64(h + i), 16)], cur + i);
            uint64_t x = kp_ld64(h + s - 2);
            push(&T[hash5(x, 16)], cur + s - 2);
            x >>= 8;
            push(&T[hash5(x, 16)], cur + s - 1);
            x >>= 8;
            uint32_t hv = hash5(x, 16);
            kp_pair c = T[hv];
            cv = x;
            push(&T[hv], s + cur);
            int32_t reach = cur + s - (MAXD - 4);
            cand = c.cur;
            if (cand > reach) {
                if ((uint32_t)cv == kp_ld32(h + cand - cur)) continue;
                cand = c.prev;
                if (cand > reach && (uint32_t)cv == kp_ld32(h + cand - cur)) continue;
            }
            cv = x >> 8;
            s++;
            break;
        }
    }
tail:
    if (emitted < len && dst->n) lits(dst, h, emitted, len);
}

/* ------------------------------------------------------------------ level 4 */

static void enc4(kp_fast *e, kp_tokens *dst, int32_t s) {
    const uint8_t *h = e->hist;
    int32_t *S = e->t1, *L = e->t2;
    int32_t cur = e->cur, emitted = s, limit = e->hlen - MARGIN, len = e->hlen;
    uint64_t cv = kp_ld64(h + s);
    for (;;) {
        int32_t next = s, t;
        for (;;) {
            uint32_t hs = hash4(cv, 15), hl = hash7(cv, 15);
            s = next;
            next = s + 1 + ((s - emitted) >> 6);
            if (next > limit) goto tail;
            int32_t sc = S[hs], lc = L[hl];
            uint64_t ahead = kp_ld64(h + next);
            S[hs] = L[hl] = s + cur;
            t = lc - cur;
            if (s - t < MAXD && (uint32_t)cv == kp_ld32(h + t)) break;
            t = sc - cur;
            if (s - t < MAXD && (uint32_t)cv == kp_ld32(h + t)) {
                /* a short match: prefer a longer one found through the long table at next */
                lc = L[hash7(ahead, 15)];
                int32_t d = next - (lc - cur);
                if (d < MAXD && kp_ld32(h + lc - cur) == (uint32_t)ahead) {
                    int32_t l1 = run_to_end(e, s + 4, t + 4);
                    int32_t l2 = run_to_end(e, next + 4, next - d + 4);
                    if (l2 > l1) {
                        s = next;
                        t = lc - cur;
                    }
                }
                break;
            }
            cv = ahead;
        }
        int32_t l = 4 + run_to_end(e, s + 4, t + 4);
        EXTEND_BACK(h, s, t, l, emitted);
        lits(dst, h, emitted, s);
        kp_tok_long(dst, l, (uint32_t)(s - t - 1));
        s += l;
        emitted = s;
        if (next >= s) s = next + 1;
        if (s >= limit) {
            if (s + 8 < len) {
                uint64_t x = kp_ld64(h + s);
                S[hash4(x, 15)] = L[hash7(x, 15)] = s + cur;
            }
            goto tail;
        }
        for (int32_t i = next; i < s - 1; i += 3) {
            uint64_t x = kp_ld64(h + i);
            L[hash7(x, 15)] = i + cur;
            L[hash7(x >> 8, 15)] = i + cur + 1;
            S[hash4(x >> 8, 15)] = i + cur + 1;
        }
        uint64_t x = kp_ld64(h + s - 1);
        S[hash4(x, 15)] = L[hash7(x, 15)] = cur + s - 1;
        cv = x >> 8;
    }
tail:
    if (emitted < len && dst->n) lits(dst, h, emitted, len);
}

/* ------------------------------------------------------------------ levels 5 and 6 */

static void enc56(kp_fast *e, kp_tokens *dst, int32_t s, int six) {
    const uint8_t *h = e->hist;
    int32_t *S = e->t1;
    kp_pair *L = e->tp;
    int32_t cur = e->cur, emitted = s, limit = e->hlen - MARGIN, len = e->hlen;
    int skip = six ? 7 : 6;
    int32_t repeat = 1; /* level 6: distance of the last match */
    uint64_t cv = kp_ld64(h + s);
    for (;;) {
        int32_t next = s, l = 0, t;
        for (;;) {
            uint32_t hs = hash4(cv, 15), hl = hash7(cv, 15);
            s = next;
            next = s + 1 + ((s - emitted) >> skip);
            if (next > limit) goto tail;
            int32_t sc = S[hs];
            kp_pair lc = L[hl];
            uint64_t ahead = kp_ld64(h + next);
            S[hs] = s + cur;
            push(&L[hl], s + cur);
            hs = hash4(ahead, 15);
            hl = hash7(ahead, 15);

            t = lc.cur - cur;
            if (s - t < MAXD) {
                if ((uint32_t)cv == kp_ld32(h + t)) {
                    S[hs] = next + cur;
                    push(&L[hl], next + cur);
                    int32_t t2 = lc.prev - cur;
                    if (s - t2 < MAXD && (uint32_t)cv == kp_ld32(h + t2)) {
                        l = 4 + run_capped(e, s + 4, t + 4);
                        int32_t l2 = 4 + run_capped(e, s + 4, t2 + 4);
                        if (l2 > l) {
                            t = t2;
                            l = l2;
                        }
                    }
                    break;
                }
                t = lc.prev - cur;
                if (s - t < MAXD && (uint32_t)cv == kp_ld32(h + t)) {
                    S[hs] = next + cur;
                    push(&L[hl], next + cur);
                    break;
                }
            }
            t = sc - cur;
            if (s - t < MAXD && (uint32_t)cv == kp_ld32(h + t)) {
                l = 4 + run_capped(e, s + 4, t + 4);
                lc = L[hl];
                S[hs] = next + cur;
                push(&L[hl], next + cur);
                if (six) { /* the last distance again, one byte on */
                    int32_t t2 = s - repeat + 1;
                    if (kp_ld32(h + t2) == (uint32_t)(cv >> 8)) {
                        int32_t ml = 4 + run_capped(e, s + 5, t2 + 4);
                        if (ml > l) {
                            t = t2;
                            l = ml;
                            s++;
                            break;
                        }
                    }
                }
                /* long candidates at next */
                int32_t t2 = lc.cur - cur;
                if (next - t2 < MAXD) {
                    if (kp_ld32(h + t2) == (uint32_t)ahead) {
                        int32_t ml = 4 + run_capped(e, next + 4, t2 + 4);
                        if (ml > l) {
                            t = t2;
                            s = next;
                            l = ml;
                            if (!six) break;
                        }
                    }
                    t2 = lc.prev - cur;
                    if (next - t2 < MAXD && kp_ld32(h + t2) == (uint32_t)ahead) {
                        int32_t ml = 4 + run_capped(e, next + 4, t2 + 4);
                        if (ml > l) {
                            t = t2;
                            s = next;
                            l = ml;
                        }
                    }
                }
                break;
            }
            cv = ahead;
        }

        if (l == 0) l = 4 + run_to_end(e, s + 4, t + 4);
        else if (l == 258) l += run_to_end(e, s + l, t + l);

        /* a match ending where a long-table entry starts may be a longer match two bytes in */
        int32_t at = s + l;
        if ((six || l < 30) && at < limit) {
            kp_pair *p = &L[hash7(kp_ld64(h + at), 15)];
            int32_t s2 = s + 2;
            int32_t t2 = p->cur - cur - l + 2;
            int32_t d = s2 - t2;
            if (!six) {
                if (t2 >= 0 && d < MAXD && d > 0) {
                    int32_t l2 = run_to_end(e, s2, t2);
                    if (l2 > l) {
                        t = t2;
                        l = l2;
                        s = s2;
                    }
                }
            } else if (d < MAXD) {
                if (d > 0 && t2 >= 0) {
                    int32_t l2 = run_to_end(e, s2, t2);
                    if (l2 > l) {
                        t = t2;
                        l = l2;
                        s = s2;
                    }
                }
                t2 = p->prev - cur - l + 2;
                d = s2 - t2;
                if (d > 0 && d < MAXD && t2 >= 0) {
                    int32_t l2 = run_to_end(e, s2, t2);
                    if (l2 > l) {
                        t = t2;
                        l = l2;
                        s = s2;
                    }
                }
            }
        }

        EXTEND_BACK(h, s, t, l, emitted);
        lits(dst, h, emitted, s);
        kp_tok_long(dst, l, (uint32_t)(s - t - 1));
        repeat = s - t;
        s += l;
        emitted = s;
        if (next >= s) s = next + 1;

        if (!six) {
            if (s >= limit) goto tail;
            int32_t i = s - l + 1;
            if (i < s - 1) {
                uint64_t x = kp_ld64(h + i);
                S[hash4(x, 15)] = i + cur;
                push(&L[hash7(x, 15)], i + cur);
                push(&L[hash7(x >> 8, 15)], i + cur + 1);
                S[hash4(x >> 16, 15)] = i + cur + 2;
                for (i += 4; i < s - 1; i += 3) {
                    x = kp_ld64(h + i);
                    push(&L[hash7(x, 15)], i + cur);
                    S[hash4(x >> 8, 15)] = i + cur + 1;
                }
            }
            uint64_t x = kp_ld64(h + s - 1);
            S[hash4(x, 15)] = cur + s - 1;
            push(&L[hash7(x, 15)], cur + s - 1);
            cv = x >> 8;
        } else {
            if (s >= limit) {
                for (int32_t i = next + 1; i < len - 8; i += 2) {
                    uint64_t x = kp_ld64(h + i);
                    S[hash4(x, 15)] = i + cur;
                    push(&L[hash7(x, 15)], i + cur);
                }
                goto tail;
            }
            for (int32_t i = next + 1; i < s - 1; i += 2) {
                uint64_t x = kp_ld64(h + i);
                kp_pair *a = &L[hash7(x, 15)], *b = &L[hash7(x >> 8, 15)];
                S[hash4(x, 15)] = i + cur;
                push(a, i + cur);
                push(b, i + cur + 1);
            }
            cv = kp_ld64(h + s);
        }
    }
tail:
    if (emitted < len && dst->n) lits(dst, h, emitted, len);
}

void kp_fast_encode(kp_fast *e, kp_tokens *dst, const uint8_t *src, int32_t n) {
    renumber(e);
    int32_t s = append(e, src, n);
    if (n < MARGIN + 2) { /* too short to search: the caller sees n tokens and codes literals */
        dst->n = (uint32_t)n;
        return;
    }
    switch (e->level) {
    case 1: enc12(e, dst, s, 15, 0); break;
    case 2: enc12(e, dst, s, 17, 1); break;
    case 3: enc3(e, dst, s); break;
    case 4: enc4(e, dst, s); break;
    case 5: enc56(e, dst, s, 0); break;
    default: enc56(e, dst, s, 1); break;
    }
}
