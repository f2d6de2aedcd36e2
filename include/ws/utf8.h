/* Incremental UTF-8 validator (RFC 3629): state is carried across chunks so a message can be
 * checked as it arrives, and it fails at the first byte that makes the sequence impossible
 * (overlongs, surrogates, code points above U+10FFFF). It validates only; it never decodes. */
#ifndef WS_UTF8_H
#define WS_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ws_utf8 {
    uint32_t state; /* 0: between code points; otherwise inside one; WS_UTF8_REJECT: failed */
};

#define WS_UTF8_REJECT 1u

/* Starts a new validation. */
void ws_utf8_init(struct ws_utf8 *v);

/* Validates the next n bytes at p. Returns 0 while everything so far can still be the prefix of
 * valid UTF-8, WS_E_UTF8 as soon as it cannot (sticky until ws_utf8_init). */
int ws_utf8_feed(struct ws_utf8 *v, const uint8_t *p, size_t n);

/* True when everything fed so far is complete, valid UTF-8 (no sequence left open). */
bool ws_utf8_complete(const struct ws_utf8 *v);

/* Validates a whole string: 0 or WS_E_UTF8. */
int ws_utf8_validate(const uint8_t *p, size_t n);

#endif
