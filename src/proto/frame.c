/* RFC 6455 §5.2 frame decoding and header encoding. The decoder gathers at most 14 header bytes
 * in its own state, checks each rule as soon as the byte it needs arrives, and hands payload back
 * unmasked in place, never copied or buffered. Message assembly, fragmentation order and UTF-8
 * belong to the session. */
#include "ws/frame.h"

#include "ws/err.h"

#include <assert.h>
#include <string.h>

/* RFC 6455 §5.2: opcodes 0x0-0x2 and 0x8-0xA are defined; 0x3-0x7 and 0xB-0xF are reserved. */
#define KNOWN_OPCODES 0x0707u

void ws_frame_decoder_init(struct ws_frame_decoder *d, bool require_mask, uint8_t rsv_allowed)
{
    memset(d, 0, sizeof *d);
    d->state = WS_FRAME_STATE_HEADER;
    d->require_mask = require_mask;
    d->rsv_allowed = rsv_allowed;
}

bool ws_frame_is_control(uint8_t opcode)
{
    return opcode >= 0x8 && opcode <= 0xF;
}

static int fail(struct ws_frame_decoder *d, int err)
{
    d->state = WS_FRAME_STATE_ERROR;
    d->err = err;
    return err;
}

/* First header byte: FIN, RSV1-3, opcode. */
static int check_byte0(struct ws_frame_decoder *d, uint8_t b)
{
    uint8_t rsv = (b >> 4) & 0x7, opcode = b & 0xF;

    /* RFC 6455 §5.2: RSV bits must be 0 unless an extension defines them. */
    if (rsv & ~d->rsv_allowed)
        return WS_E_RSV;
    /* RFC 6455 §5.2: a reserved opcode fails the connection. */
    if (!(KNOWN_OPCODES >> opcode & 1))
        return WS_E_OPCODE;
    /* RFC 6455 §5.5: control frames must not be fragmented. */
    if (!(b & 0x80) && ws_frame_is_control(opcode))
        return WS_E_CONTROL_FRAGMENTED;
    d->header.fin = b & 0x80;
    d->header.rsv = rsv;
    d->header.opcode = opcode;
    return 0;
}

/* Second header byte: MASK, 7-bit length. */
static int check_byte1(struct ws_frame_decoder *d, uint8_t b)
{
    bool masked = b & 0x80;

    /* RFC 6455 §5.1: clients mask every frame, servers none. */
    if (masked != d->require_mask)
        return masked ? WS_E_MASKED : WS_E_UNMASKED;
    /* RFC 6455 §5.5: control payloads are at most 125 bytes, so never use 126/127 either. */
    if ((b & 0x7F) > WS_FRAME_MAX_CONTROL_PAYLOAD && ws_frame_is_control(d->header.opcode))
        return WS_E_CONTROL_TOO_BIG;
    d->header.masked = masked;
    d->header.length = b & 0x7F;
    return 0;
}

/* Bytes of extended length announced by the 7-bit length (RFC 6455 §5.2). */
static size_t ext_bytes(uint8_t len7)
{
    return len7 == 126 ? 2 : len7 == 127 ? 8 : 0;
}

/* Decodes and checks the extended length once all its bytes are in hdr[2..). */
static int check_length(struct ws_frame_decoder *d, size_t ext)
{
    uint64_t len = 0;

    for (size_t i = 0; i < ext; i++)
        len = len << 8 | d->hdr[2 + i];
    /* RFC 6455 §5.2: "the minimal number of bytes MUST be used to encode the length". */
    if (ext == 2 ? len < 126 : len <= 0xFFFF)
        return WS_E_LENGTH_NOT_MINIMAL;
    d->header.length = len;
    return 0;
}

/* Moves header bytes from p into d->hdr, checking each rule as soon as its byte is present.
 * Returns 0 when the header is complete, WS_E_AGAIN when all n bytes went in without completing
 * it, or a violation; *used counts the bytes taken (including an offending one). */
static int take_header(struct ws_frame_decoder *d, const uint8_t *p, size_t n, size_t *used)
{
    size_t i = 0, ext, need, k;
    int rc;

    if (n == 0) /* p may be NULL */
        goto again;
    if (d->hdr_len == 0) {
        d->hdr[d->hdr_len++] = p[i];
        if ((rc = check_byte0(d, p[i++])) < 0)
            goto out;
    }
    if (d->hdr_len == 1) {
        if (i == n)
            goto again;
        d->hdr[d->hdr_len++] = p[i];
        if ((rc = check_byte1(d, p[i++])) < 0)
            goto out;
    }
    ext = ext_bytes(d->hdr[1] & 0x7F);
    need = 2 + ext + (d->header.masked ? 4 : 0);
    if (d->hdr_len < 2 + ext) {
        /* RFC 6455 §5.2: the most significant bit of a 64-bit length MUST be 0. */
        if (ext == 8 && d->hdr_len == 2 && i < n && (p[i] & 0x80)) {
            d->hdr[d->hdr_len++] = p[i++];
            rc = WS_E_LENGTH_TOP_BIT;
            goto out;
        }
        k = 2 + ext - d->hdr_len;
        if (k > n - i)
            k = n - i;
        memcpy(d->hdr + d->hdr_len, p + i, k);
        d->hdr_len += k;
        i += k;
        if (d->hdr_len < 2 + ext)
            goto again;
        if ((rc = check_length(d, ext)) < 0)
            goto out;
    }
    if (d->hdr_len < need) {
        k = need - d->hdr_len;
        if (k > n - i)
            k = n - i;
        memcpy(d->hdr + d->hdr_len, p + i, k);
        d->hdr_len += k;
        i += k;
        if (d->hdr_len < need)
            goto again;
    }
    if (d->header.masked)
        memcpy(d->header.mask, d->hdr + 2 + ext, 4);
    else
        memset(d->header.mask, 0, 4);
    rc = 0;
    goto out;
again:
    rc = WS_E_AGAIN;
out:
    *used = i;
    return rc;
}

int ws_frame_decode(struct ws_frame_decoder *d, uint8_t *data, size_t len, size_t *used,
                    struct ws_frame_event *ev)
{
    int rc;
    size_t take;

    *used = 0;
    switch (d->state) {
    case WS_FRAME_STATE_ERROR:
        return d->err;
    case WS_FRAME_STATE_HEADER:
        if (d->hdr_len == 0 && len >= 6 && (data[1] & 0x7F) < 126 && d->require_mask) {
            /* the common case: a whole short masked header in the buffer, checked in place */
            *used = 1; /* the bytes taken include an offending one, as take_header's */
            if ((rc = check_byte0(d, data[0])) < 0)
                return fail(d, rc);
            *used = 2;
            if ((rc = check_byte1(d, data[1])) < 0)
                return fail(d, rc);
            memcpy(d->header.mask, data + 2, 4);
            *used = 6;
        } else {
            rc = take_header(d, data, len, used);
            if (rc == WS_E_AGAIN)
                return rc;
            if (rc < 0)
                return fail(d, rc);
        }
        d->state = WS_FRAME_STATE_PAYLOAD;
        d->remaining = d->header.length;
        d->offset = 0;
        ev->type = WS_FRAME_HEADER;
        ev->header = d->header;
        ev->data = NULL;
        ev->len = 0;
        ev->last = false;
        return 0;
    case WS_FRAME_STATE_PAYLOAD:
        /* An empty payload needs no bytes, so its event comes even from an empty call. */
        take = d->remaining < len ? (size_t)d->remaining : len;
        if (take == 0 && d->remaining > 0)
            return WS_E_AGAIN;
        if (d->header.masked && take > 0)
            ws_frame_mask(data, take, d->header.mask, d->offset);
        d->offset += take;
        d->remaining -= take;
        *used = take;
        ev->type = WS_FRAME_PAYLOAD;
        ev->header = d->header;
        ev->data = data;
        ev->len = take;
        ev->last = d->remaining == 0;
        if (ev->last) {
            d->state = WS_FRAME_STATE_HEADER;
            d->hdr_len = 0;
        }
        return 0;
    }
    assert(!"bad decoder state");
    return WS_E_INVAL;
}

size_t ws_frame_take_whole(const struct ws_frame_decoder *d, uint8_t *data, size_t len, size_t max,
                           uint8_t *opcode, uint8_t **payload, size_t *plen)
{
    if (len < 2 || !ws_frame_between(d))
        return 0;
    /* FIN set, RSV clear, opcode text or binary (RFC 6455 §5.2): 0x81 or 0x82 */
    uint8_t b0 = data[0], b1 = data[1];
    if (b0 != (0x80 | WS_OP_TEXT) && b0 != (0x80 | WS_OP_BINARY))
        return 0;
    bool masked = b1 & 0x80;
    size_t n = b1 & 0x7F, hlen = masked ? 6 : 2;
    if (masked != d->require_mask || n > 125 || n > max || len < hlen + n)
        return 0;
    if (masked)
        ws_frame_mask(data + hlen, n, data + 2, 0);
    *opcode = b0 & 0x0F;
    *payload = data + hlen;
    *plen = n;
    return hlen + n;
}

size_t ws_frame_encode_header(uint8_t out[WS_FRAME_MAX_HEADER], bool fin, uint8_t rsv,
                              uint8_t opcode, uint64_t len, const uint8_t *mask)
{
    size_t n = 2;

    assert(rsv <= 0x7 && opcode <= 0xF);
    assert(len >> 63 == 0); /* RFC 6455 §5.2: the top bit of a 64-bit length is 0 */
    out[0] = (uint8_t)((fin ? 0x80 : 0) | rsv << 4 | opcode);
    /* RFC 6455 §5.2: the minimal length encoding. */
    if (len < 126) {
        out[1] = (uint8_t)len;
    } else if (len <= 0xFFFF) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] = 127;
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (mask) {
        out[1] |= 0x80;
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

/* 16 bytes XORed as one (SSE2 on x86-64, NEON on arm64; plain words elsewhere). */
typedef uint8_t mask_vec __attribute__((vector_size(16)));

void ws_frame_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset)
{
    size_t k = offset & 3;
    uint8_t m4[4];
    uint32_t m32;
    uint64_t m, w0;
    mask_vec mv, v0, v1, v2, v3;

    /* Byte steps up to a 16-byte boundary so the vector loop never splits a cache line (for a
     * short payload the steps would cost more than the split loads). */
    while (n >= 128 && ((uintptr_t)p & 15)) {
        *p++ ^= mask[k];
        k = (k + 1) & 3;
        n--;
    }
    /* RFC 6455 §5.3: byte i is XORed with mask[i % 4]; 16 and 8 are multiples of 4, so one vector
     * (one word) of mask rotated to the current position serves every one. memcpy keeps the
     * loads well-defined. */
    memcpy(&m32, mask, 4);
    if (k) {
        unsigned r = 8 * (unsigned)k; /* the word's first byte becomes mask[k] */
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        m32 = m32 << r | m32 >> (32 - r);
#else
        m32 = m32 >> r | m32 << (32 - r);
#endif
    }
    memcpy(m4, &m32, 4);
    m = (uint64_t)m32 << 32 | m32;
    if (n >= 16) {
        uint64_t m2[2] = {m, m};
        memcpy(&mv, m2, 16);
        for (; n >= 64; p += 64, n -= 64) {
            memcpy(&v0, p, 16);
            memcpy(&v1, p + 16, 16);
            memcpy(&v2, p + 32, 16);
            memcpy(&v3, p + 48, 16);
            v0 ^= mv;
            v1 ^= mv;
            v2 ^= mv;
            v3 ^= mv;
            memcpy(p, &v0, 16);
            memcpy(p + 16, &v1, 16);
            memcpy(p + 32, &v2, 16);
            memcpy(p + 48, &v3, 16);
        }
        for (; n >= 16; p += 16, n -= 16) {
            memcpy(&v0, p, 16);
            v0 ^= mv;
            memcpy(p, &v0, 16);
        }
    }
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w0, p, 8);
        w0 ^= m;
        memcpy(p, &w0, 8);
    }
    for (size_t i = 0; i < n; i++)
        p[i] ^= m4[i & 3];
}
