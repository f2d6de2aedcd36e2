/* Fuzz target for the frame decoder and encoder (src/proto/frame.c). Input: two control bytes, then
 * the byte stream. Control byte 0: bits 0-2 chunk size class, bit 3 allows RSV1 (as
 * permessage-deflate would), bit 4 also decodes the stream as a client (unmasked frames expected);
 * both control bytes seed the chunk sizes. Checks, for the server side (and the client side when
 * asked):
 *   - one-shot feeding, chunked feeding (each chunk an exact-size heap copy, empty chunks too) and
 *     a reference parser written from RFC 6455 §5.2 give the same headers, payload bytes, final
 *     error and bytes consumed up to the error;
 *   - every header's wire bytes are what ws_frame_encode_header writes for it (minimal lengths);
 *   - the decode contract: *used <= len, WS_E_AGAIN consumes everything, payload spans point at
 *     the consumed bytes, last is set exactly when the payload is complete, errors are sticky;
 *   - ws_frame_mask at every alignment and mask offset equals a byte loop;
 *   - encode -> decode round trip of a header taken from the input. */
#include "fuzz.h"

#include "ws/err.h"
#include "ws/frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct frame_rec {
    struct ws_frame_header h;
    struct fuzz_bytes payload;
    bool done; /* the whole payload arrived */
};

struct run {
    struct frame_rec *f;
    size_t n, cap;
    int err;         /* 0 (stream ended cleanly, perhaps mid-frame) or the violation */
    size_t consumed; /* stream bytes consumed, including the byte revealing a violation */
};

static struct frame_rec *add_frame(struct run *r)
{
    if (r->n == r->cap) {
        r->cap = r->cap ? 2 * r->cap : 16;
        r->f = realloc(r->f, r->cap * sizeof *r->f);
        if (!r->f)
            abort();
    }
    struct frame_rec *f = &r->f[r->n++];
    memset(f, 0, sizeof *f);
    return f;
}

static void run_free(struct run *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->f[i].payload.p);
    free(r->f);
    memset(r, 0, sizeof *r);
}

static bool same_header(const struct ws_frame_header *a, const struct ws_frame_header *b)
{
    return a->fin == b->fin && a->rsv == b->rsv && a->opcode == b->opcode &&
           a->masked == b->masked && memcmp(a->mask, b->mask, 4) == 0 && a->length == b->length;
}

static void check_same(const struct run *a, const struct run *b)
{
    FUZZ_CHECK(a->err == b->err);
    FUZZ_CHECK(a->consumed == b->consumed);
    FUZZ_CHECK(a->n == b->n);
    for (size_t i = 0; i < a->n; i++) {
        FUZZ_CHECK(same_header(&a->f[i].h, &b->f[i].h));
        FUZZ_CHECK(a->f[i].done == b->f[i].done);
        FUZZ_CHECK(a->f[i].payload.n == b->f[i].payload.n);
        FUZZ_CHECK(a->f[i].payload.n == 0 ||
                   memcmp(a->f[i].payload.p, b->f[i].payload.p, a->f[i].payload.n) == 0);
    }
}

/* The reference: RFC 6455 §5.2 field by field over the whole stream, unmasking byte by byte. */
static void run_ref(const uint8_t *s, size_t len, bool require_mask, uint8_t rsv, struct run *r)
{
    size_t pos = 0;
    for (;;) {
        struct fuzz_ref_header h;
        size_t c;
        int rc = fuzz_ref_header(s + pos, len - pos, require_mask, rsv, &h, &c);
        if (rc == WS_E_AGAIN) {
            r->consumed = len;
            return;
        }
        if (rc < 0) {
            r->err = rc;
            r->consumed = pos + c;
            return;
        }
        struct frame_rec *f = add_frame(r);
        f->h = (struct ws_frame_header){h.fin, h.rsv, h.opcode, h.masked, {0}, h.length};
        memcpy(f->h.mask, h.mask, 4);
        pos += h.size;
        size_t take = h.length < len - pos ? (size_t)h.length : len - pos;
        for (size_t i = 0; i < take; i++) {
            uint8_t b = s[pos + i] ^ h.mask[i % 4];
            fuzz_bytes_add(&f->payload, &b, 1);
        }
        pos += take;
        f->done = take == h.length;
        if (!f->done || pos == len) {
            r->consumed = len;
            return;
        }
    }
}

/* What the decoder must have accepted in a header it reports. */
static void check_header(const struct ws_frame_header *h, bool require_mask, uint8_t rsv)
{
    FUZZ_CHECK(h->opcode <= 2 || (h->opcode >= 8 && h->opcode <= 10));
    FUZZ_CHECK((h->rsv & ~rsv) == 0);
    FUZZ_CHECK(h->masked == require_mask);
    FUZZ_CHECK(h->length >> 63 == 0);
    if (ws_frame_is_control(h->opcode))
        FUZZ_CHECK(h->fin && h->length <= WS_FRAME_MAX_CONTROL_PAYLOAD);
}

/* Feeds s[0..len) to a fresh decoder, in chunks from ch (NULL: one chunk), recording frames. */
static void run_decoder(const uint8_t *s, size_t len, bool require_mask, uint8_t rsv,
                        struct fuzz_chunker *ch, struct run *r)
{
    struct ws_frame_decoder d;
    ws_frame_decoder_init(&d, require_mask, rsv);
    size_t pos = 0;       /* stream offset of the current chunk */
    size_t frame_at = 0;  /* stream offset where the current frame's header began */
    size_t payload_n = 0; /* payload bytes of the current frame so far */
    for (;;) {
        size_t n = ch ? fuzz_chunker_next(ch) : len - pos;
        if (n > len - pos)
            n = len - pos;
        uint8_t *chunk = fuzz_dup(s + pos, n);
        size_t off = 0;
        for (;;) {
            struct ws_frame_event ev;
            size_t used = 12345;
            int rc = ws_frame_decode(&d, chunk + off, n - off, &used, &ev);
            FUZZ_CHECK(used <= n - off);
            if (rc == WS_E_AGAIN) {
                FUZZ_CHECK(used == n - off);
                off = n;
                /* Nothing is pending: an empty call (even with NULL) has nothing to say. */
                FUZZ_CHECK(ws_frame_decode(&d, NULL, 0, &used, &ev) == WS_E_AGAIN && used == 0);
                break;
            }
            off += used;
            if (rc < 0) {
                r->err = rc;
                r->consumed = pos + off;
                size_t again = 1;
                FUZZ_CHECK(ws_frame_decode(&d, chunk + off, n - off, &again, &ev) == rc);
                FUZZ_CHECK(again == 0);
                break;
            }
            FUZZ_CHECK(rc == 0);
            if (ev.type == WS_FRAME_HEADER) {
                FUZZ_CHECK(r->n == 0 || r->f[r->n - 1].done);
                check_header(&ev.header, require_mask, rsv);
                /* The wire bytes are exactly the minimal encoding of what was decoded. */
                uint8_t enc[WS_FRAME_MAX_HEADER];
                size_t hn = ws_frame_encode_header(enc, ev.header.fin, ev.header.rsv,
                                                   ev.header.opcode, ev.header.length,
                                                   ev.header.masked ? ev.header.mask : NULL);
                FUZZ_CHECK(frame_at + hn == pos + off);
                FUZZ_CHECK(memcmp(enc, s + frame_at, hn) == 0);
                struct frame_rec *f = add_frame(r);
                f->h = ev.header;
                payload_n = 0;
            } else {
                FUZZ_CHECK(ev.type == WS_FRAME_PAYLOAD);
                FUZZ_CHECK(r->n > 0 && !r->f[r->n - 1].done);
                struct frame_rec *f = &r->f[r->n - 1];
                FUZZ_CHECK(same_header(&ev.header, &f->h));
                FUZZ_CHECK(ev.len == used);
                FUZZ_CHECK(ev.len == 0 || ev.data == chunk + off - used);
                /* Empty spans only for empty frames; otherwise as much as the chunk holds. */
                FUZZ_CHECK(ev.len > 0 || (f->h.length == 0 && ev.last));
                FUZZ_CHECK(payload_n + ev.len <= f->h.length);
                payload_n += ev.len;
                FUZZ_CHECK(ev.last == (payload_n == f->h.length));
                FUZZ_CHECK(ev.last || off == n);
                fuzz_bytes_add(&f->payload, ev.data, ev.len);
                f->done = ev.last;
                if (ev.last)
                    frame_at = pos + off;
            }
        }
        pos += n;
        free(chunk);
        if (r->err || pos == len)
            break;
    }
    if (!r->err)
        r->consumed = len;
}

static void decode_all_ways(const uint8_t *s, size_t len, bool require_mask, uint8_t rsv,
                            uint8_t c0, uint8_t c1)
{
    struct run ref = {0}, whole = {0}, chunked = {0};
    run_ref(s, len, require_mask, rsv, &ref);
    run_decoder(s, len, require_mask, rsv, NULL, &whole);
    struct fuzz_chunker ch;
    fuzz_chunker_init(&ch, c0, c1);
    run_decoder(s, len, require_mask, rsv, &ch, &chunked);
    check_same(&ref, &whole);
    check_same(&whole, &chunked);
    run_free(&ref);
    run_free(&whole);
    run_free(&chunked);
}

/* ws_frame_mask over s at alignment align and mask position offset, against a byte loop; also
 * split in two at a point from the input, the second call continuing the mask position. */
static void check_mask(const uint8_t *s, size_t len, const uint8_t mask[4], uint64_t offset,
                       size_t align, size_t split)
{
    uint8_t *a = fuzz_malloc(len + align), *b = fuzz_malloc(len + align);
    if (len) {
        memcpy(a + align, s, len);
        memcpy(b + align, s, len);
    }
    ws_frame_mask(a + align, len, mask, offset);
    for (size_t i = 0; i < len; i++)
        FUZZ_CHECK(a[align + i] == (s[i] ^ mask[(offset + i) % 4]));
    if (split > len)
        split = len;
    ws_frame_mask(b + align, split, mask, offset);
    ws_frame_mask(b + align + split, len - split, mask, offset + split);
    FUZZ_CHECK(len == 0 || memcmp(a + align, b + align, len) == 0);
    /* Masking twice restores the bytes (RFC 6455 §5.3: the same algorithm both ways). */
    ws_frame_mask(a + align, len, mask, offset);
    FUZZ_CHECK(len == 0 || memcmp(a + align, s, len) == 0);
    free(a);
    free(b);
}

/* Encodes a header from input bytes and decodes it back. */
static void check_roundtrip(const uint8_t *p, size_t n)
{
    if (n < 9)
        return;
    bool fin = p[0] & 0x80, masked = p[0] & 0x40;
    uint8_t rsv = (p[0] >> 4) & 3, opcode = p[0] & 0x0F;
    uint64_t len = 0;
    for (size_t i = 1; i < 9; i++)
        len = len << 8 | p[i];
    /* Spread lengths over all three encodings, not just the 64-bit one. */
    switch (p[8] & 3) {
    case 0:
        len &= 0x7F;
        break;
    case 1:
        len &= 0x1FFFF;
        break;
    default:
        len &= ~(1ull << 63);
        break;
    }
    static const uint8_t mask[4] = {0xA5, 0x00, 0xFF, 0x3C};
    uint8_t enc[WS_FRAME_MAX_HEADER];
    size_t hn = ws_frame_encode_header(enc, fin, rsv, opcode, len, masked ? mask : NULL);
    size_t want = (len < 126 ? 2 : len <= 0xFFFF ? 4 : 10) + (masked ? 4 : 0);
    FUZZ_CHECK(hn == want);
    struct ws_frame_decoder d;
    ws_frame_decoder_init(&d, masked, 7);
    struct ws_frame_event ev;
    size_t used;
    int rc = ws_frame_decode(&d, enc, hn, &used, &ev);
    bool known = opcode <= 2 || (opcode >= 8 && opcode <= 10);
    bool control_ok = !ws_frame_is_control(opcode) || (fin && len <= 125);
    if (known && control_ok) {
        FUZZ_CHECK(rc == 0 && used == hn && ev.type == WS_FRAME_HEADER);
        FUZZ_CHECK(ev.header.fin == fin && ev.header.rsv == rsv && ev.header.opcode == opcode);
        FUZZ_CHECK(ev.header.masked == masked && ev.header.length == len);
        FUZZ_CHECK(!masked || memcmp(ev.header.mask, mask, 4) == 0);
    } else {
        FUZZ_CHECK(rc == (!known ? WS_E_OPCODE
                          : !fin ? WS_E_CONTROL_FRAGMENTED
                                 : WS_E_CONTROL_TOO_BIG));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t c0 = data[0], c1 = data[1];
    const uint8_t *s = data + 2;
    size_t len = size - 2;
    uint8_t rsv = c0 & 0x08 ? WS_FRAME_RSV1 : 0;

    /* RFC 6455 §5.1: the server requires masked frames. */
    decode_all_ways(s, len, true, rsv, c0, c1);
    if (c0 & 0x10)
        decode_all_ways(s, len, false, rsv, (uint8_t)(c0 + 1), c1);

    uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint64_t offset = 0;
    if (len >= 4)
        memcpy(mask, s + len - 4, 4);
    for (size_t i = 0; i < 8 && i < len; i++)
        offset = offset << 8 | s[i];
    check_mask(s, len, mask, offset, c1 & 7, c0 % (len + 1));
    check_roundtrip(s, len);
    return 0;
}
