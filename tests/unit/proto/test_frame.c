/* Unit tests for the frame decoder and header encoder: the RFC 6455 §5.7 examples, each §5.2
 * violation at the byte that reveals it, encode/decode round trips, identical results for every
 * split of a stream, the word-at-a-time mask against a byte loop, and the one-step path for a
 * whole short data frame. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "ws/err.h"
#include "ws/frame.h"

#define MAX_FRAMES 16

/* What a decoder run produced: each frame's header and its payload, concatenated. */
struct rec_frame {
    struct ws_frame_header h;
    uint8_t *payload; /* owned */
    size_t len;
    bool done; /* saw the last payload event */
};

struct rec {
    struct rec_frame f[MAX_FRAMES];
    size_t n;
    int err; /* 0, or the violation that stopped the run */
    size_t events;
};

static void rec_free(struct rec *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->f[i].payload);
    memset(r, 0, sizeof *r);
}

static bool same_header(const struct ws_frame_header *a, const struct ws_frame_header *b)
{
    return a->fin == b->fin && a->rsv == b->rsv && a->opcode == b->opcode &&
           a->masked == b->masked && memcmp(a->mask, b->mask, 4) == 0 && a->length == b->length;
}

/* Feeds one chunk (an exact-size heap copy, so ASan sees any read past it) until the decoder
 * wants more, checking the API's promises on every call. */
static void feed_chunk(struct ws_frame_decoder *d, struct rec *r, const uint8_t *p, size_t n)
{
    uint8_t *chunk = malloc(n ? n : 1);
    size_t off = 0;

    assert_non_null(chunk);
    if (n)
        memcpy(chunk, p, n);
    while (r->err == 0) {
        struct ws_frame_event ev;
        size_t used = 12345;
        uint64_t remaining = d->remaining;
        bool in_payload = d->state == WS_FRAME_STATE_PAYLOAD;
        int rc = ws_frame_decode(d, chunk + off, n - off, &used, &ev);
        assert_true(used <= n - off);
        if (rc == WS_E_AGAIN) {
            assert_int_equal(used, n - off); /* AGAIN always consumes everything */
            break;
        }
        off += used;
        if (rc < 0) {
            r->err = rc;
            break;
        }
        assert_int_equal(rc, 0);
        r->events++;
        if (ev.type == WS_FRAME_HEADER) {
            assert_false(in_payload);
            assert_true(r->n == 0 || r->f[r->n - 1].done);
            assert_true(r->n < MAX_FRAMES);
            struct rec_frame *f = &r->f[r->n++];
            f->h = ev.header;
            f->payload = NULL;
            f->len = 0;
            f->done = false;
            continue;
        }
        assert_int_equal(ev.type, WS_FRAME_PAYLOAD);
        assert_true(in_payload && r->n > 0);
        struct rec_frame *f = &r->f[r->n - 1];
        assert_true(same_header(&ev.header, &f->h));
        /* Never buffered: the span is exactly min(remaining, available), in place. */
        size_t avail = n - (off - used);
        assert_int_equal(ev.len, remaining < avail ? remaining : avail);
        assert_int_equal(ev.len, used);
        if (ev.len)
            assert_ptr_equal(ev.data, chunk + off - used);
        assert_int_equal(ev.last, ev.len == remaining);
        f->payload = realloc(f->payload, f->len + ev.len + 1);
        assert_non_null(f->payload);
        if (ev.len)
            memcpy(f->payload + f->len, ev.data, ev.len);
        f->len += ev.len;
        f->done = ev.last;
    }
    free(chunk);
}

/* Decodes stream split at the ascending offsets cuts[0..ncuts). */
static void run(struct rec *r, bool require_mask, uint8_t rsv_allowed, const uint8_t *stream,
                size_t n, const size_t *cuts, size_t ncuts)
{
    struct ws_frame_decoder d;
    size_t at = 0;

    memset(r, 0, sizeof *r);
    ws_frame_decoder_init(&d, require_mask, rsv_allowed);
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        feed_chunk(&d, r, stream + at, end - at);
        at = end;
    }
}

static void run_whole(struct rec *r, bool require_mask, const uint8_t *stream, size_t n)
{
    run(r, require_mask, 0, stream, n, NULL, 0);
}

static void assert_same_rec(const struct rec *a, const struct rec *b)
{
    assert_int_equal(a->err, b->err);
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        assert_true(same_header(&a->f[i].h, &b->f[i].h));
        assert_int_equal(a->f[i].done, b->f[i].done);
        assert_int_equal(a->f[i].len, b->f[i].len);
        if (a->f[i].len)
            assert_memory_equal(a->f[i].payload, b->f[i].payload, a->f[i].len);
    }
}

static void assert_frame(const struct rec_frame *f, bool fin, uint8_t opcode, const char *payload,
                         size_t len)
{
    assert_int_equal(f->h.fin, fin);
    assert_int_equal(f->h.opcode, opcode);
    assert_int_equal(f->h.rsv, 0);
    assert_int_equal(f->h.length, len);
    assert_true(f->done);
    assert_int_equal(f->len, len);
    if (len)
        assert_memory_equal(f->payload, payload, len);
}

#define BYTES(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

/* RFC 6455 §5.7, every example. */
static void test_rfc_examples(void **state)
{
    struct rec r;
    (void)state;

    /* A single-frame unmasked text message: what a server sends, so a client decodes it. */
    run_whole(&r, false, BYTES(0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f));
    assert_int_equal(r.err, 0);
    assert_int_equal(r.n, 1);
    assert_frame(&r.f[0], true, WS_OP_TEXT, "Hello", 5);
    assert_false(r.f[0].h.masked);
    rec_free(&r);
    run_whole(&r, true, BYTES(0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f));
    assert_int_equal(r.err, WS_E_UNMASKED);
    rec_free(&r);

    /* A single-frame masked text message: what a client sends. */
    static const uint8_t masked[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                     0x7f, 0x9f, 0x4d, 0x51, 0x58};
    run_whole(&r, true, masked, sizeof masked);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.n, 1);
    assert_frame(&r.f[0], true, WS_OP_TEXT, "Hello", 5);
    assert_true(r.f[0].h.masked);
    assert_memory_equal(r.f[0].h.mask, masked + 2, 4);
    rec_free(&r);
    run_whole(&r, false, masked, sizeof masked);
    assert_int_equal(r.err, WS_E_MASKED);
    rec_free(&r);

    /* A fragmented unmasked text message. */
    run_whole(&r, false, BYTES(0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f));
    assert_int_equal(r.err, 0);
    assert_int_equal(r.n, 2);
    assert_frame(&r.f[0], false, WS_OP_TEXT, "Hel", 3);
    assert_frame(&r.f[1], true, WS_OP_CONTINUATION, "lo", 2);
    rec_free(&r);

    /* Unmasked ping, and the masked pong answering it. */
    run_whole(&r, false, BYTES(0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f));
    assert_int_equal(r.err, 0);
    assert_frame(&r.f[0], true, WS_OP_PING, "Hello", 5);
    rec_free(&r);
    run_whole(&r, true, BYTES(0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58));
    assert_int_equal(r.err, 0);
    assert_frame(&r.f[0], true, WS_OP_PONG, "Hello", 5);
    rec_free(&r);

    /* 256 bytes and 64 KiB of binary data in one unmasked frame. */
    static const uint8_t h256[] = {0x82, 0x7E, 0x01, 0x00};
    static const uint8_t h64k[] = {0x82, 0x7F, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00};
    static const struct {
        const uint8_t *hdr;
        size_t hdr_len, len;
    } big[] = {{h256, sizeof h256, 256}, {h64k, sizeof h64k, 65536}};
    for (size_t i = 0; i < 2; i++) {
        uint8_t out[WS_FRAME_MAX_HEADER];
        assert_int_equal(ws_frame_encode_header(out, true, 0, WS_OP_BINARY, big[i].len, NULL),
                         big[i].hdr_len);
        assert_memory_equal(out, big[i].hdr, big[i].hdr_len);
        size_t n = big[i].hdr_len + big[i].len;
        uint8_t *s = malloc(n);
        char *want = malloc(big[i].len);
        assert_true(s && want);
        memcpy(s, big[i].hdr, big[i].hdr_len);
        for (size_t k = 0; k < big[i].len; k++)
            want[k] = (char)(k * 7 + 3);
        memcpy(s + big[i].hdr_len, want, big[i].len);
        run_whole(&r, false, s, n);
        assert_int_equal(r.err, 0);
        assert_int_equal(r.n, 1);
        assert_int_equal(r.events, 2); /* one header event, one payload span */
        assert_frame(&r.f[0], true, WS_OP_BINARY, want, big[i].len);
        rec_free(&r);
        free(s);
        free(want);
    }
}

struct violation {
    const char *name;
    uint8_t bytes[10];
    size_t at; /* index of the byte that reveals it */
    bool require_mask;
    uint8_t rsv_allowed;
    int err;
};

/* RFC 6455 §5.2 and §5.5: each broken rule, reported by the call that delivers the byte showing
 * it, never earlier, never later, and sticky. */
static void test_violations(void **state)
{
    static const struct violation v[] = {
        {"RSV1", {0xC1, 0x85}, 0, true, 0, WS_E_RSV},
        {"RSV2", {0xA1, 0x85}, 0, true, 0, WS_E_RSV},
        {"RSV3", {0x91, 0x85}, 0, true, 0, WS_E_RSV},
        {"RSV2 with RSV1 allowed", {0xE1, 0x85}, 0, true, WS_FRAME_RSV1, WS_E_RSV},
        {"opcode 3", {0x83, 0x80}, 0, true, 0, WS_E_OPCODE},
        {"opcode 7", {0x87, 0x80}, 0, true, 0, WS_E_OPCODE},
        {"opcode B", {0x8B, 0x80}, 0, true, 0, WS_E_OPCODE},
        {"opcode F", {0x8F, 0x80}, 0, true, 0, WS_E_OPCODE},
        {"unmasked from client", {0x81, 0x05}, 1, true, 0, WS_E_UNMASKED},
        {"masked from server", {0x81, 0x85}, 1, false, 0, WS_E_MASKED},
        {"fragmented close", {0x08, 0x80}, 0, true, 0, WS_E_CONTROL_FRAGMENTED},
        {"fragmented ping", {0x09, 0x80}, 0, true, 0, WS_E_CONTROL_FRAGMENTED},
        {"fragmented pong", {0x0A, 0x80}, 0, true, 0, WS_E_CONTROL_FRAGMENTED},
        {"ping 126", {0x89, 0xFE, 0x00, 0x7E}, 1, true, 0, WS_E_CONTROL_TOO_BIG},
        {"close 127", {0x88, 0xFF, 0x00}, 1, true, 0, WS_E_CONTROL_TOO_BIG},
        {"pong 126 unmasked", {0x8A, 0x7E}, 1, false, 0, WS_E_CONTROL_TOO_BIG},
        {"16-bit 125", {0x82, 0xFE, 0x00, 0x7D}, 3, true, 0, WS_E_LENGTH_NOT_MINIMAL},
        {"16-bit 0", {0x82, 0xFE, 0x00, 0x00}, 3, true, 0, WS_E_LENGTH_NOT_MINIMAL},
        {"64-bit 65535",
         {0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF},
         9,
         true,
         0,
         WS_E_LENGTH_NOT_MINIMAL},
        {"64-bit 0", {0x02, 0x7F, 0, 0, 0, 0, 0, 0, 0, 0}, 9, false, 0, WS_E_LENGTH_NOT_MINIMAL},
        {"64-bit top bit",
         {0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0},
         2,
         true,
         0,
         WS_E_LENGTH_TOP_BIT},
        {"64-bit all ones", {0x82, 0x7F, 0xFF, 0xFF}, 2, false, 0, WS_E_LENGTH_TOP_BIT},
    };
    (void)state;
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        struct ws_frame_decoder d;
        struct ws_frame_event ev;
        uint8_t b[10];
        size_t used;

        memcpy(b, v[i].bytes, sizeof b);
        ws_frame_decoder_init(&d, v[i].require_mask, v[i].rsv_allowed);
        for (size_t k = 0; k < v[i].at; k++) {
            assert_int_equal(ws_frame_decode(&d, b + k, 1, &used, &ev), WS_E_AGAIN);
            assert_int_equal(used, 1);
        }
        int rc = ws_frame_decode(&d, b + v[i].at, 1, &used, &ev);
        if (rc != v[i].err)
            fail_msg("%s: got %d, want %d", v[i].name, rc, v[i].err);
        /* Sticky: nothing more is consumed or decoded until init. */
        assert_int_equal(ws_frame_decode(&d, b, sizeof b, &used, &ev), v[i].err);
        assert_int_equal(used, 0);
        assert_int_equal(ws_frame_decode(&d, NULL, 0, &used, &ev), v[i].err);
        assert_int_equal(d.state, WS_FRAME_STATE_ERROR);

        /* The same from one call over all the bytes. */
        ws_frame_decoder_init(&d, v[i].require_mask, v[i].rsv_allowed);
        assert_int_equal(ws_frame_decode(&d, b, sizeof b, &used, &ev), v[i].err);
        assert_int_equal(used, v[i].at + 1);

        /* Init clears it. */
        ws_frame_decoder_init(&d, false, 0);
        memcpy(b, (const uint8_t[]){0x89, 0x00}, 2);
        assert_int_equal(ws_frame_decode(&d, b, 2, &used, &ev), 0);
        assert_int_equal(ev.type, WS_FRAME_HEADER);
    }
}

/* The edges of each rule are accepted. */
static void test_accepted_edges(void **state)
{
    uint8_t s[200];
    struct rec r;
    (void)state;

    /* RSV bits the extension allows. */
    run(&r, true, WS_FRAME_RSV1, BYTES(0xC1, 0x80, 1, 2, 3, 4), NULL, 0);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.f[0].h.rsv, WS_FRAME_RSV1);
    rec_free(&r);
    run(&r, true, 7, BYTES(0xF2, 0x80, 1, 2, 3, 4), NULL, 0);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.f[0].h.rsv, 7);
    rec_free(&r);

    /* Every defined opcode, and control payloads of exactly 125 bytes. */
    static const uint8_t ops[] = {0x0, 0x1, 0x2, 0x8, 0x9, 0xA};
    for (size_t i = 0; i < sizeof ops; i++) {
        size_t n = ws_frame_encode_header(s, true, 0, ops[i], 125, NULL);
        memset(s + n, 'x', 125);
        run_whole(&r, false, s, n + 125);
        assert_int_equal(r.err, 0);
        assert_int_equal(r.f[0].h.opcode, ops[i]);
        assert_int_equal(r.f[0].len, 125);
        rec_free(&r);
    }

    /* The smallest 16- and 64-bit lengths. */
    run_whole(&r, false, BYTES(0x82, 0x7E, 0x00, 0x7E));
    assert_int_equal(r.err, 0);
    assert_int_equal(r.f[0].h.length, 126);
    rec_free(&r);
    run_whole(&r, false, BYTES(0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0));
    assert_int_equal(r.err, 0);
    assert_int_equal(r.f[0].h.length, 65536);
    rec_free(&r);
    run_whole(&r, false, BYTES(0x82, 0x7F, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF));
    assert_int_equal(r.err, 0);
    assert_int_equal(r.f[0].h.length, UINT64_MAX >> 1);
    rec_free(&r);
}

static void test_is_control(void **state)
{
    (void)state;
    for (unsigned op = 0; op < 16; op++)
        assert_int_equal(ws_frame_is_control((uint8_t)op), op >= 8);
}

/* Encoder: minimal lengths, mask bit only with a mask, and the decoder reads it all back. */
static void test_encode_decode_lengths(void **state)
{
    static const uint64_t lens[] = {0,     1,     125,   126,           127,
                                    65535, 65536, 70000, 4294967297ull, UINT64_MAX >> 1};
    static const uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
    (void)state;
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        for (int masked = 0; masked < 2; masked++) {
            uint64_t len = lens[i];
            uint8_t h[WS_FRAME_MAX_HEADER];
            size_t n = ws_frame_encode_header(h, i & 1, (uint8_t)(i % 3 == 0 ? WS_FRAME_RSV1 : 0),
                                              WS_OP_BINARY, len, masked ? mask : NULL);
            size_t want = (len < 126 ? 2 : len <= 0xFFFF ? 4 : 10) + (masked ? 4 : 0);
            assert_int_equal(n, want);
            assert_int_equal(!!(h[1] & 0x80), masked);
            if (masked)
                assert_memory_equal(h + n - 4, mask, 4);

            struct ws_frame_decoder d;
            struct ws_frame_event ev;
            size_t used;
            ws_frame_decoder_init(&d, masked, WS_FRAME_RSV1);
            assert_int_equal(ws_frame_decode(&d, h, n, &used, &ev), 0);
            assert_int_equal(used, n);
            assert_int_equal(ev.type, WS_FRAME_HEADER);
            assert_int_equal(ev.header.length, len);
            assert_int_equal(ev.header.fin, i & 1);
            assert_int_equal(ev.header.rsv, i % 3 == 0 ? WS_FRAME_RSV1 : 0);
            assert_int_equal(ev.header.opcode, WS_OP_BINARY);
            assert_int_equal(ev.header.masked, masked);
            if (len > 100000) {
                /* Huge: a first slice of payload comes back as a partial span. */
                uint8_t p[1000] = {0};
                assert_int_equal(ws_frame_decode(&d, p, sizeof p, &used, &ev), 0);
                assert_int_equal(ev.len, sizeof p);
                assert_false(ev.last);
                assert_int_equal(d.remaining, len - sizeof p);
                continue;
            }
            uint8_t *p = malloc(len + 1);
            assert_non_null(p);
            for (size_t k = 0; k < len; k++)
                p[k] = (uint8_t)k;
            if (masked)
                ws_frame_mask(p, len, mask, 0);
            assert_int_equal(ws_frame_decode(&d, p, len, &used, &ev), 0);
            assert_int_equal(ev.type, WS_FRAME_PAYLOAD);
            assert_int_equal(ev.len, len);
            assert_true(ev.last);
            for (size_t k = 0; k < len; k++)
                assert_int_equal(p[k], (uint8_t)k);
            free(p);
            /* The decoder is ready for the next header. */
            assert_int_equal(d.state, WS_FRAME_STATE_HEADER);
            assert_int_equal(ws_frame_decode(&d, NULL, 0, &used, &ev), WS_E_AGAIN);
        }
    }
    /* The first byte. */
    uint8_t h[WS_FRAME_MAX_HEADER];
    ws_frame_encode_header(h, true, 0, WS_OP_TEXT, 0, NULL);
    assert_int_equal(h[0], 0x81);
    ws_frame_encode_header(h, false, WS_FRAME_RSV1, WS_OP_TEXT, 0, NULL);
    assert_int_equal(h[0], 0x41);
    ws_frame_encode_header(h, true, 0, WS_OP_CLOSE, 2, NULL);
    assert_int_equal(h[0], 0x88);
    assert_int_equal(h[1], 0x02);
}

/* Empty input and empty frames: len 0 is AGAIN with nothing used, except that a zero-length
 * frame's single empty payload event needs no bytes. */
static void test_empty(void **state)
{
    struct ws_frame_decoder d;
    struct ws_frame_event ev;
    uint8_t b[] = {0x89, 0x00, 0x81, 0x80, 1, 2, 3, 4};
    size_t used = 99;
    (void)state;

    ws_frame_decoder_init(&d, false, 0);
    assert_int_equal(ws_frame_decode(&d, NULL, 0, &used, &ev), WS_E_AGAIN);
    assert_int_equal(used, 0);
    assert_int_equal(ws_frame_decode(&d, b, 2, &used, &ev), 0);
    assert_int_equal(used, 2);
    assert_int_equal(ev.type, WS_FRAME_HEADER);
    assert_int_equal(ev.header.opcode, WS_OP_PING);
    assert_int_equal(ev.header.length, 0);
    assert_int_equal(ws_frame_decode(&d, b + 2, 0, &used, &ev), 0);
    assert_int_equal(used, 0);
    assert_int_equal(ev.type, WS_FRAME_PAYLOAD);
    assert_int_equal(ev.len, 0);
    assert_true(ev.last);
    assert_int_equal(ws_frame_decode(&d, b + 2, 0, &used, &ev), WS_E_AGAIN);

    /* Masked, empty, client to server. */
    ws_frame_decoder_init(&d, true, 0);
    assert_int_equal(ws_frame_decode(&d, b + 2, 6, &used, &ev), 0);
    assert_int_equal(used, 6);
    assert_memory_equal(ev.header.mask, b + 4, 4);
    assert_int_equal(ws_frame_decode(&d, NULL, 0, &used, &ev), 0);
    assert_true(ev.type == WS_FRAME_PAYLOAD && ev.len == 0 && ev.last);

    /* Empty calls in the middle of a header. */
    uint8_t e[] = {0x82, 0x7E, 0x01, 0x00};
    ws_frame_decoder_init(&d, false, 0);
    for (size_t i = 0; i < sizeof e; i++) {
        assert_int_equal(ws_frame_decode(&d, NULL, 0, &used, &ev), WS_E_AGAIN);
        assert_int_equal(used, 0);
        assert_int_equal(ws_frame_decode(&d, e + i, 1, &used, &ev),
                         i + 1 < sizeof e ? WS_E_AGAIN : 0);
    }
    assert_int_equal(ev.header.length, 256);

    /* A frame with payload waits for its bytes. */
    uint8_t c[] = {0x82, 0x03, 'a', 'b', 'c'};
    ws_frame_decoder_init(&d, false, 0);
    assert_int_equal(ws_frame_decode(&d, c, 2, &used, &ev), 0);
    assert_int_equal(ws_frame_decode(&d, c + 2, 0, &used, &ev), WS_E_AGAIN);
    assert_int_equal(used, 0);
    assert_int_equal(ws_frame_decode(&d, c + 2, 1, &used, &ev), 0);
    assert_true(ev.len == 1 && !ev.last && ev.data == c + 2);
    assert_int_equal(ws_frame_decode(&d, c + 3, 2, &used, &ev), 0);
    assert_true(ev.len == 2 && ev.last && ev.data == c + 3);
}

/* A client's stream exercising every header shape: fragments with a control frame between,
 * empty frames, 16-bit lengths, RSV1, and a mask that does not restart per span. */
static size_t build_stream(uint8_t *s, size_t cap)
{
    static const struct {
        bool fin;
        uint8_t rsv, opcode;
        size_t len;
    } fr[] = {
        {false, 0, WS_OP_TEXT, 3},
        {true, 0, WS_OP_PING, 0},
        {false, 0, WS_OP_CONTINUATION, 0},
        {true, 0, WS_OP_CONTINUATION, 2},
        {true, WS_FRAME_RSV1, WS_OP_BINARY, 300},
        {true, 0, WS_OP_PONG, 125},
        {true, 0, WS_OP_TEXT, 0},
        {true, 0, WS_OP_BINARY, 126},
        {true, 0, WS_OP_CLOSE, 2},
    };
    size_t n = 0;
    for (size_t i = 0; i < sizeof fr / sizeof fr[0]; i++) {
        uint8_t mask[4] = {(uint8_t)(0x11 * i), 0xA5, (uint8_t)(0x3C + i), 0xF0};
        assert_true(n + WS_FRAME_MAX_HEADER + fr[i].len <= cap);
        n += ws_frame_encode_header(s + n, fr[i].fin, fr[i].rsv, fr[i].opcode, fr[i].len, mask);
        for (size_t k = 0; k < fr[i].len; k++)
            s[n + k] = (uint8_t)(i * 31 + k);
        ws_frame_mask(s + n, fr[i].len, mask, 0);
        n += fr[i].len;
    }
    return n;
}

/* Any split of the stream, and byte-by-byte feeding, give the same frames and bytes. */
static void test_every_split(void **state)
{
    uint8_t s[1024];
    size_t n = build_stream(s, sizeof s);
    struct rec whole, other;
    (void)state;

    run(&whole, true, WS_FRAME_RSV1, s, n, NULL, 0);
    assert_int_equal(whole.err, 0);
    assert_int_equal(whole.n, 9);
    for (size_t i = 0; i < whole.n; i++) {
        assert_true(whole.f[i].done);
        for (size_t k = 0; k < whole.f[i].len; k++)
            assert_int_equal(whole.f[i].payload[k], (uint8_t)(i * 31 + k));
    }

    for (size_t cut = 0; cut <= n; cut++) {
        run(&other, true, WS_FRAME_RSV1, s, n, &cut, 1);
        assert_same_rec(&whole, &other);
        rec_free(&other);
    }
    /* Two cuts, both in the first 80 bytes (headers, empty frames, short payloads). */
    for (size_t a = 0; a < 80; a++) {
        for (size_t b = a; b < 80; b++) {
            size_t cuts[2] = {a, b};
            run(&other, true, WS_FRAME_RSV1, s, n, cuts, 2);
            assert_same_rec(&whole, &other);
            rec_free(&other);
        }
    }
    /* Byte by byte. */
    size_t *cuts = malloc(n * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    run(&other, true, WS_FRAME_RSV1, s, n, cuts, n);
    assert_same_rec(&whole, &other);
    rec_free(&other);
    free(cuts);

    /* A violation after good frames is found at the same place whatever the split. */
    s[n] = 0x83; /* opcode 3 */
    s[n + 1] = 0x80;
    rec_free(&whole);
    run(&whole, true, WS_FRAME_RSV1, s, n + 2, NULL, 0);
    assert_int_equal(whole.err, WS_E_OPCODE);
    assert_int_equal(whole.n, 9);
    for (size_t cut = 0; cut <= n + 2; cut += 7) {
        run(&other, true, WS_FRAME_RSV1, s, n + 2, &cut, 1);
        assert_same_rec(&whole, &other);
        rec_free(&other);
    }
    rec_free(&whole);
}

/* A 64-bit length frame, cut near the header and near the end. */
static void test_split_large(void **state)
{
    static const uint8_t mask[4] = {0xde, 0xad, 0xbe, 0xef};
    size_t len = 65536 + 77, n;
    uint8_t *s = malloc(len + WS_FRAME_MAX_HEADER);
    struct rec whole, other;
    (void)state;

    assert_non_null(s);
    n = ws_frame_encode_header(s, true, 0, WS_OP_BINARY, len, mask);
    assert_int_equal(n, 14);
    for (size_t k = 0; k < len; k++)
        s[n + k] = (uint8_t)(k ^ (k >> 8));
    ws_frame_mask(s + n, len, mask, 0);
    n += len;
    run(&whole, true, 0, s, n, NULL, 0);
    assert_int_equal(whole.err, 0);
    assert_int_equal(whole.f[0].len, len);
    for (size_t k = 0; k < len; k++)
        assert_int_equal(whole.f[0].payload[k], (uint8_t)(k ^ (k >> 8)));
    for (size_t i = 0; i < 40; i++) {
        size_t cuts[] = {i, n - 40 + i};
        run(&other, true, 0, s, n, cuts, 2);
        assert_same_rec(&whole, &other);
        rec_free(&other);
        /* Odd-sized slices in between, so spans start at every mask phase. */
        size_t step[12], m = 0;
        for (size_t at = 14 + i; at < n && m < 12; at += 4093 + i)
            step[m++] = at;
        run(&other, true, 0, s, n, step, m);
        assert_same_rec(&whole, &other);
        rec_free(&other);
    }
    rec_free(&whole);
    free(s);
}

/* ws_frame_mask equals a byte loop at every alignment, mask phase and length, and writes
 * nothing outside its span. */
static void test_mask_against_naive(void **state)
{
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    /* lengths past 128: the alignment steps and the 64- and 16-byte vector loops */
    uint8_t *buf = malloc(16 + 300 + 16), *ref = malloc(16 + 300 + 16);
    (void)state;

    assert_true(buf && ref);
    for (size_t align = 0; align < 16; align++) {
        for (uint64_t offset = 0; offset < 8; offset++) {
            for (size_t len = 0; len <= 300; len++) {
                for (size_t k = 0; k < 332; k++)
                    buf[k] = ref[k] = (uint8_t)(k * 13 + len);
                for (size_t k = 0; k < len; k++)
                    ref[align + k] ^= mask[(offset + k) % 4];
                ws_frame_mask(buf + align, len, mask, offset);
                assert_memory_equal(buf, ref, 332);
            }
        }
    }
    /* Large offsets only matter modulo 4. */
    memset(buf, 0, 32);
    ws_frame_mask(buf, 32, mask, (1ull << 40) + 6);
    for (size_t k = 0; k < 32; k++)
        assert_int_equal(buf[k], mask[(k + 2) % 4]);
    /* Masking twice restores the data. */
    for (size_t k = 0; k < 100; k++)
        buf[k] = ref[k] = (uint8_t)k;
    ws_frame_mask(buf + 3, 97, mask, 5);
    ws_frame_mask(buf + 3, 97, mask, 5);
    assert_memory_equal(buf, ref, 100);
    free(buf);
    free(ref);
}

/* Writes a masked (or, mask NULL, unmasked) frame of payload p into out; returns its size. */
static size_t make_frame(uint8_t *out, uint8_t b0, const uint8_t *mask, const uint8_t *p, size_t n)
{
    size_t h = ws_frame_encode_header(out, b0 & 0x80, (b0 >> 4) & 7, b0 & 0xF, n, mask);
    memcpy(out + h, p, n);
    if (mask)
        ws_frame_mask(out + h, n, mask, 0);
    return h + n;
}

static void test_take_whole(void **state)
{
    static const uint8_t mask[4] = {0x37, 0xfa, 0x21, 0x3d};
    uint8_t text[200], f[300], *payload;
    uint8_t opcode;
    size_t plen;
    struct ws_frame_decoder server, client;
    (void)state;

    for (size_t k = 0; k < sizeof text; k++)
        text[k] = (uint8_t)('a' + k % 26);
    ws_frame_decoder_init(&server, true, 0);
    ws_frame_decoder_init(&client, false, 0);
    /* whole text and binary frames up to 125 bytes, with bytes after them: taken, unmasked */
    for (size_t n = 0; n <= 125; n++) {
        size_t len = make_frame(f, 0x80 | WS_OP_TEXT, mask, text, n);
        f[len] = 0x81; /* the next frame's first byte */
        assert_int_equal(ws_frame_take_whole(&server, f, len + 1, 1000, &opcode, &payload, &plen),
                         len);
        assert_int_equal(opcode, WS_OP_TEXT);
        assert_int_equal(plen, n);
        assert_ptr_equal(payload, f + 6);
        assert_memory_equal(payload, text, n);
        len = make_frame(f, 0x80 | WS_OP_BINARY, NULL, text, n);
        assert_int_equal(ws_frame_take_whole(&client, f, len, 1000, &opcode, &payload, &plen), len);
        assert_int_equal(opcode, WS_OP_BINARY);
        assert_memory_equal(payload, text, n);
    }
    /* everything else is left to the decoder, untouched */
    static const struct {
        uint8_t b0;
        size_t n;
        bool masked;
        size_t cut, max;
    } no[] = {
        {0x00 | WS_OP_TEXT, 10, true, 0, 1000},  /* not FIN: a fragment */
        {0x80 | WS_OP_PING, 10, true, 0, 1000},  /* control */
        {0xC0 | WS_OP_TEXT, 10, true, 0, 1000},  /* RSV1 (compressed) */
        {0x80 | 0x3, 10, true, 0, 1000},         /* reserved opcode */
        {0x80 | WS_OP_TEXT, 126, true, 0, 1000}, /* a 16-bit length */
        {0x80 | WS_OP_TEXT, 10, true, 1, 1000},  /* the last byte not there yet */
        {0x80 | WS_OP_TEXT, 10, false, 0, 1000}, /* unmasked, to a server */
        {0x80 | WS_OP_TEXT, 10, true, 0, 9},     /* over the message limit */
    };
    for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
        size_t len = make_frame(f, no[i].b0, no[i].masked ? mask : NULL, text, no[i].n);
        uint8_t copy[300];
        memcpy(copy, f, len);
        assert_int_equal(
            ws_frame_take_whole(&server, f, len - no[i].cut, no[i].max, &opcode, &payload, &plen),
            0);
        assert_memory_equal(f, copy, len);
    }
    size_t len = make_frame(f, 0x80 | WS_OP_TEXT, mask, text, 10);
    assert_int_equal(ws_frame_take_whole(&client, f, len, 1000, &opcode, &payload, &plen), 0);
    assert_int_equal(ws_frame_take_whole(&server, f, 1, 1000, &opcode, &payload, &plen), 0);
    /* a decoder inside a frame is not between frames */
    struct ws_frame_event ev;
    size_t used;
    assert_int_equal(ws_frame_decode(&server, f, 6, &used, &ev), 0);
    assert_int_equal(ev.type, WS_FRAME_HEADER);
    assert_int_equal(ws_frame_take_whole(&server, f, len, 1000, &opcode, &payload, &plen), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_examples),          cmocka_unit_test(test_violations),
        cmocka_unit_test(test_accepted_edges),        cmocka_unit_test(test_is_control),
        cmocka_unit_test(test_encode_decode_lengths), cmocka_unit_test(test_empty),
        cmocka_unit_test(test_every_split),           cmocka_unit_test(test_split_large),
        cmocka_unit_test(test_mask_against_naive),    cmocka_unit_test(test_take_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
