/* Incremental UTF-8 validation (RFC 3629 §4) with a byte-class DFA in the style of Hoehrmann,
 * rejecting at the first byte no valid sequence can contain, and an 8-bytes-at-a-time ASCII fast
 * path between code points. It validates only: no decoding, no allocation. */
#include "ws/utf8.h"

#include "ws/err.h"

#include <string.h>

/* DFA states. 0 and 1 are fixed by the header (between code points, failed); the others say
 * how many continuation bytes are still due and, for the second byte, which range is allowed. */
enum {
    S_ACCEPT = 0,
    S_REJECT = WS_UTF8_REJECT,
    S_TAIL1, /* one continuation byte 80..BF due */
    S_TAIL2, /* two continuation bytes due */
    S_E0,    /* after E0: A0..BF, else overlong (RFC 3629 §3) */
    S_ED,    /* after ED: 80..9F, else a surrogate U+D800..DFFF (RFC 3629 §3) */
    S_TAIL3, /* three continuation bytes due (after F1..F3) */
    S_F0,    /* after F0: 90..BF, else overlong */
    S_F4,    /* after F4: 80..8F, else above U+10FFFF (RFC 3629 §3) */
};

/* Byte classes: 0 ASCII, 1 80..8F, 2 90..9F, 3 A0..BF, 4 never valid (C0, C1, F5..FF:
 * RFC 3629 §1), 5 C2..DF, 6 E0, 7 E1..EC EE..EF, 8 ED, 9 F0, 10 F1..F3, 11 F4. */
// clang-format off
static const uint8_t byte_class[256] = {
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, /* 00..1F */
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, /* 20..3F */
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, /* 40..5F */
    0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, 0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0, /* 60..7F */
    1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1, 2,2,2,2,2,2,2,2,2,2,2,2,2,2,2,2, /* 80..9F */
    3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3, 3,3,3,3,3,3,3,3,3,3,3,3,3,3,3,3, /* A0..BF */
    4,4,5,5,5,5,5,5,5,5,5,5,5,5,5,5, 5,5,5,5,5,5,5,5,5,5,5,5,5,5,5,5, /* C0..DF */
    6,7,7,7,7,7,7,7,7,7,7,7,7,8,7,7, 9,10,10,10,11,4,4,4,4,4,4,4,4,4,4,4, /* E0..FF */
};

/* next_state[state][class]; classes 12..15 are padding so a row is 16 wide (index = state << 4). */
static const uint8_t next_state[9 * 16] = {
    /* class:    ASC 80   90   A0   bad  C2   E0   E1   ED   F0   F1   F4 */
    /* ACCEPT */ 0,  1,   1,   1,   1,   2,   4,   3,   5,   7,   6,   8,   1,1,1,1,
    /* REJECT */ 1,  1,   1,   1,   1,   1,   1,   1,   1,   1,   1,   1,   1,1,1,1,
    /* TAIL1  */ 1,  0,   0,   0,   1,   1,   1,   1,   1,   1,   1,   1,   1,1,1,1,
    /* TAIL2  */ 1,  2,   2,   2,   1,   1,   1,   1,   1,   1,   1,   1,   1,1,1,1,
    /* E0     */ 1,  1,   1,   2,   1,   1,   1,   1,   1,   1,   1,   1,   1,1,1,1,
    /* ED     */ 1,  2,   2,   1,   1,   1,   1,   1,   1,   1,   1,   1,   1,1,1,1,
    /* TAIL3  */ 1,  3,   3,   3,   1,   1,   1,   1,   1,   1,   1,   1,   1,1,1,1,
    /* F0     */ 1,  1,   3,   3,   1,   1,   1,   1,   1,   1,   1,   1,   1,1,1,1,
    /* F4     */ 1,  3,   1,   1,   1,   1,   1,   1,   1,   1,   1,   1,   1,1,1,1,
};
// clang-format on

#define HIGH_BITS 0x8080808080808080ull
#define SHORT_ASCII_BYTES 256 /* ws_utf8_validate checks up to this many for ASCII first */

void ws_utf8_init(struct ws_utf8 *v)
{
    v->state = S_ACCEPT;
}

int ws_utf8_feed(struct ws_utf8 *v, const uint8_t *p, size_t n)
{
    uint32_t s = v->state;
    size_t i = 0;

    if (s == S_REJECT)
        return WS_E_UTF8;
    while (i < n) {
        if (s == S_ACCEPT && p[i] < 0x80) {
            /* ASCII between code points: skip 32 bytes at a time while all four words are
             * ASCII, then whole words, then the odd bytes. */
            uint64_t w, w1, w2, w3;
            while (n - i >= 32) {
                memcpy(&w, p + i, 8);
                memcpy(&w1, p + i + 8, 8);
                memcpy(&w2, p + i + 16, 8);
                memcpy(&w3, p + i + 24, 8);
                if ((w | w1 | w2 | w3) & HIGH_BITS)
                    break;
                i += 32;
            }
            while (n - i >= 8) {
                memcpy(&w, p + i, 8);
                if (w & HIGH_BITS)
                    break;
                i += 8;
            }
            while (i < n && p[i] < 0x80)
                i++;
            if (i == n)
                break;
        }
        s = next_state[s << 4 | byte_class[p[i++]]];
        if (s == S_REJECT) {
            v->state = S_REJECT;
            return WS_E_UTF8;
        }
    }
    v->state = s;
    return 0;
}

bool ws_utf8_complete(const struct ws_utf8 *v)
{
    return v->state == S_ACCEPT;
}

int ws_utf8_validate(const uint8_t *p, size_t n)
{
    struct ws_utf8 v;

    if (n <= SHORT_ASCII_BYTES) {
        /* a short string (most messages): all ASCII in one pass of words, without the DFA */
        uint64_t any = 0, w;
        if (n >= 8) {
            for (size_t i = 0; i + 8 <= n; i += 8) {
                memcpy(&w, p + i, 8);
                any |= w;
            }
            memcpy(&w, p + n - 8, 8); /* the tail, overlapping the last word */
            any |= w;
        } else {
            for (size_t i = 0; i < n; i++)
                any |= p[i];
        }
        if (!(any & HIGH_BITS))
            return 0;
    }
    ws_utf8_init(&v);
    if (ws_utf8_feed(&v, p, n) < 0 || !ws_utf8_complete(&v))
        return WS_E_UTF8;
    return 0;
}
