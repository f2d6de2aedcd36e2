/* Helpers shared by the libFuzzer entry points: an always-on check that aborts (libFuzzer then
 * saves the input), a deterministic chunk-size stream derived from the input, and slow reference
 * implementations of the RFC 3629 and RFC 6455 §5.2 rules that the targets compare against.
 * Header-only (static inline) so each target stays one translation unit. */
#ifndef WS_FUZZ_H
#define WS_FUZZ_H

#include "ws/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Unlike assert(), never compiled out: a broken invariant is the finding. */
#define FUZZ_CHECK(cond) ((cond) ? (void)0 : fuzz_fail(#cond, __FILE__, __LINE__))

static inline void fuzz_fail(const char *what, const char *file, int line)
{
    fprintf(stderr, "%s:%d: invariant broken: %s\n", file, line, what);
    abort();
}

static inline void *fuzz_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

/* An exact-size heap copy, so ASan reports any read past n and any event that still points into
 * the copy after it is freed. */
static inline uint8_t *fuzz_dup(const void *p, size_t n)
{
    uint8_t *q = fuzz_malloc(n);
    if (n)
        memcpy(q, p, n);
    return q;
}

/* --- chunk sizes ------------------------------------------------------------------------------ */

/* Chunk sizes for feeding a stream: a xorshift32 sequence seeded by two control bytes, with the
 * size class (largest chunk) in the low 3 bits of the first. Class 0 feeds byte by byte; the
 * classes with small chunks also produce empty chunks, which every decoder must accept. */
struct fuzz_chunker {
    uint32_t x;
    size_t max;
    bool allow_empty;
    bool last_empty;
};

static inline void fuzz_chunker_init(struct fuzz_chunker *c, uint8_t c0, uint8_t c1)
{
    static const size_t max[8] = {1, 2, 3, 5, 9, 17, 130, 1000};
    c->x = ((uint32_t)c0 << 8 | c1) * 2654435761u ^ 0x9E3779B9u;
    if (c->x == 0)
        c->x = 1;
    c->max = max[c0 & 7];
    c->allow_empty = (c0 & 7) >= 1 && (c0 & 7) <= 4;
    c->last_empty = false;
}

static inline size_t fuzz_chunker_next(struct fuzz_chunker *c)
{
    c->x ^= c->x << 13;
    c->x ^= c->x >> 17;
    c->x ^= c->x << 5;
    size_t n = c->allow_empty && !c->last_empty ? c->x % (c->max + 1) : 1 + c->x % c->max;
    c->last_empty = n == 0;
    return n;
}

/* --- UTF-8 reference (RFC 3629) ------------------------------------------------------------- */

/* Reference validator written from code point ranges, not byte tables: an open sequence is
 * still fine while some completion of it is a scalar value of its length (RFC 3629 §3: no
 * overlongs, no surrogates, nothing above U+10FFFF). Returns 1 when p[0..n) is complete valid
 * UTF-8, 0 when it is a valid prefix left open at the end, -1 when invalid; then *bad is the index
 * of the first byte after which no valid completion exists. */
static inline int fuzz_ref_utf8(const uint8_t *p, size_t n, size_t *bad)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = p[i];
        size_t len;
        uint32_t cp, min;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xE0) == 0xC0) {
            len = 2, cp = b & 0x1F, min = 0x80;
        } else if ((b & 0xF0) == 0xE0) {
            len = 3, cp = b & 0x0F, min = 0x800;
        } else if ((b & 0xF8) == 0xF0) {
            len = 4, cp = b & 0x07, min = 0x10000;
        } else {
            *bad = i;
            return -1;
        }
        /* Check the prefix after each byte of the sequence, so *bad is the earliest index. */
        for (size_t have = 1; have <= len; have++) {
            if (have > 1) {
                if (i + have - 1 >= n)
                    return 0;
                uint8_t cb = p[i + have - 1];
                if ((cb & 0xC0) != 0x80) {
                    *bad = i + have - 1;
                    return -1;
                }
                cp = cp << 6 | (cb & 0x3F);
            }
            unsigned missing = (unsigned)(6 * (len - have));
            uint32_t lo = cp << missing, hi = lo | ((1u << missing) - 1);
            if (lo < min)
                lo = min;
            if (hi > 0x10FFFF)
                hi = 0x10FFFF;
            if (lo > hi || (lo >= 0xD800 && hi <= 0xDFFF)) {
                *bad = i + have - 1;
                return -1;
            }
        }
        i += len;
    }
    return 1;
}

/* --- frame header reference (RFC 6455 §5.2) ------------------------------------------------- */

struct fuzz_ref_header {
    bool fin;
    uint8_t rsv;
    uint8_t opcode;
    bool masked;
    uint8_t mask[4];
    uint64_t length;
    size_t size; /* header bytes on the wire */
};

/* Reads the frame header at p[0..n), written straight from the RFC's field list. Returns 0 with
 * *h filled; WS_E_AGAIN when the n bytes hold no violation but not the whole header; or the
 * violation, with *consumed the bytes up to and including the one that reveals it. Checks on one
 * byte are in the decoder's documented order: RSV, opcode, fragmented control; mask bit, control
 * length. */
static inline int fuzz_ref_header(const uint8_t *p, size_t n, bool require_mask,
                                  uint8_t rsv_allowed, struct fuzz_ref_header *h, size_t *consumed)
{
    *consumed = n;
    if (n < 1)
        return WS_E_AGAIN;
    *consumed = 1;
    h->fin = p[0] >> 7;
    h->rsv = (p[0] >> 4) & 7;
    h->opcode = p[0] & 0x0F;
    bool control = h->opcode >= 8;
    if (h->rsv & ~rsv_allowed)
        return WS_E_RSV;
    if (!(h->opcode <= 2 || (h->opcode >= 8 && h->opcode <= 10)))
        return WS_E_OPCODE;
    if (control && !h->fin)
        return WS_E_CONTROL_FRAGMENTED;
    *consumed = n;
    if (n < 2)
        return WS_E_AGAIN;
    *consumed = 2;
    h->masked = p[1] >> 7;
    uint8_t len7 = p[1] & 0x7F;
    if (h->masked != require_mask)
        return h->masked ? WS_E_MASKED : WS_E_UNMASKED;
    if (control && len7 > 125)
        return WS_E_CONTROL_TOO_BIG;
    size_t ext = len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
    if (ext == 8 && n >= 3 && (p[2] & 0x80)) {
        *consumed = 3;
        return WS_E_LENGTH_TOP_BIT;
    }
    *consumed = n;
    if (n < 2 + ext)
        return WS_E_AGAIN;
    h->length = len7;
    if (ext) {
        h->length = 0;
        for (size_t i = 0; i < ext; i++)
            h->length = h->length * 256 + p[2 + i];
        if ((ext == 2 && h->length < 126) || (ext == 8 && h->length < 65536)) {
            *consumed = 2 + ext;
            return WS_E_LENGTH_NOT_MINIMAL;
        }
    }
    h->size = 2 + ext + (h->masked ? 4 : 0);
    if (n < h->size)
        return WS_E_AGAIN;
    memset(h->mask, 0, 4);
    if (h->masked)
        memcpy(h->mask, p + 2 + ext, 4);
    *consumed = h->size;
    return 0;
}

/* --- event logs ----------------------------------------------------------------------------- */

/* A growable byte string for payload and message copies. */
struct fuzz_bytes {
    uint8_t *p;
    size_t n, cap;
};

static inline void fuzz_bytes_add(struct fuzz_bytes *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    if (b->cap - b->n < n) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap - b->n < n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            abort();
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

#endif
