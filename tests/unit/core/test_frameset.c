/* Unit tests for frame sets (src/core/frameset.c): the plain frame encoded once and shared, its
 * header at every length boundary, the compressed frame made once per window size (9..15) with
 * RSV1 and inflating back to the message (RFC 7692 §7.2.2), references dropped by free while
 * holders keep theirs, and ws_frameset_encode's header bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/buf.h"
#include "ws/deflate.h"
#include "ws/frame.h"
#include "ws/frameset.h"
#include "ws/outq.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

static uint8_t *message(size_t len)
{
    uint8_t *m = malloc(len ? len : 1);
    assert_non_null(m);
    /* compressible but not trivial: words with a counter */
    for (size_t i = 0; i < len; i++)
        m[i] = (uint8_t)("the quick brown fox "[i % 20] + (i / 997) % 3);
    return m;
}

/* The header a server frame of len payload bytes must start with (RFC 6455 §5.2). */
static size_t expected_header(uint8_t out[10], uint8_t byte0, uint64_t len)
{
    out[0] = byte0;
    if (len <= 125) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        return 4;
    }
    out[1] = 127;
    for (int i = 0; i < 8; i++)
        out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
    return 10;
}

static void assert_frame(const struct ws_shared *s, uint8_t byte0, const uint8_t *payload,
                         size_t len)
{
    uint8_t hdr[10];
    size_t hlen = expected_header(hdr, byte0, len);
    assert_int_equal(s->len, hlen + len);
    assert_memory_equal(s->data, hdr, hlen);
    if (len)
        assert_memory_equal(s->data + hlen, payload, len);
}

/* The payload of a whole unmasked frame: skips its header. */
static const uint8_t *payload_of(const struct ws_shared *s, size_t *len)
{
    assert_true(s->len >= 2);
    assert_int_equal(s->data[1] & 0x80, 0); /* server frames are not masked */
    size_t hlen = 2;
    uint64_t n = s->data[1] & 0x7f;
    if (n == 126) {
        n = (uint64_t)s->data[2] << 8 | s->data[3];
        hlen = 4;
    } else if (n == 127) {
        n = 0;
        for (int i = 0; i < 8; i++)
            n = n << 8 | s->data[2 + i];
        hlen = 10;
    }
    assert_int_equal(hlen + n, s->len);
    *len = (size_t)n;
    return s->data + hlen;
}

/* RFC 7692 §7.2.2: append 0x00 0x00 0xff 0xff and inflate raw with a window of bits. */
static uint8_t *inflate_payload(const uint8_t *p, size_t n, int bits, size_t max, size_t *out_len)
{
    uint8_t *in = malloc(n + 4);
    assert_non_null(in);
    memcpy(in, p, n);
    memcpy(in + n, "\x00\x00\xff\xff", 4);
    uint8_t *out = malloc(max + 1);
    assert_non_null(out);
    z_stream z;
    memset(&z, 0, sizeof(z));
    assert_int_equal(inflateInit2(&z, -bits), Z_OK);
    z.next_in = in;
    z.avail_in = (uInt)(n + 4);
    z.next_out = out;
    z.avail_out = (uInt)(max + 1);
    int rc = inflate(&z, Z_SYNC_FLUSH);
    assert_true(rc == Z_OK || rc == Z_STREAM_END);
    assert_int_equal(z.avail_in, 0);
    *out_len = (size_t)((max + 1) - z.avail_out);
    inflateEnd(&z);
    free(in);
    return out;
}

static void test_plain_shared_once(void **state)
{
    (void)state;
    uint8_t *m = message(300);
    struct ws_frameset set;
    ws_frameset_init(&set, WS_OP_TEXT, m, 300, NULL, NULL);
    struct ws_shared *a = ws_frameset_plain(&set);
    assert_non_null(a);
    assert_ptr_equal(ws_frameset_plain(&set), a);
    assert_ptr_equal(ws_frameset_plain(&set), a);
    assert_int_equal(a->refs, 1); /* the set's own reference, however often asked */
    assert_frame(a, 0x81, m, 300);
    /* the payload is a copy: the caller may reuse its buffer once queued */
    assert_ptr_not_equal(a->data + 4, m);
    ws_frameset_free(&set);
    free(m);
}

static void test_plain_lengths(void **state)
{
    (void)state;
    const size_t lengths[] = {0, 1, 125, 126, 127, 65535, 65536, 70000};
    for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
        size_t len = lengths[i];
        uint8_t *m = message(len);
        struct ws_frameset set;
        ws_frameset_init(&set, WS_OP_BINARY, m, len, NULL, NULL);
        assert_frame(ws_frameset_plain(&set), 0x82, m, len);
        ws_frameset_free(&set);
        free(m);
    }
    /* the exact header bytes at the boundaries */
    struct ws_frameset set;
    uint8_t *m = message(65536);
    ws_frameset_init(&set, WS_OP_TEXT, m, 125, NULL, NULL);
    assert_memory_equal(ws_frameset_plain(&set)->data, "\x81\x7d", 2);
    ws_frameset_free(&set);
    ws_frameset_init(&set, WS_OP_TEXT, m, 126, NULL, NULL);
    assert_memory_equal(ws_frameset_plain(&set)->data, "\x81\x7e\x00\x7e", 4);
    ws_frameset_free(&set);
    ws_frameset_init(&set, WS_OP_TEXT, m, 65535, NULL, NULL);
    assert_memory_equal(ws_frameset_plain(&set)->data, "\x81\x7e\xff\xff", 4);
    ws_frameset_free(&set);
    ws_frameset_init(&set, WS_OP_TEXT, m, 65536, NULL, NULL);
    assert_memory_equal(ws_frameset_plain(&set)->data, "\x81\x7f\0\0\0\0\0\x01\0\0", 10);
    ws_frameset_free(&set);
    ws_frameset_init(&set, WS_OP_TEXT, m, 0, NULL, NULL);
    struct ws_shared *empty = ws_frameset_plain(&set);
    assert_int_equal(empty->len, 2);
    assert_memory_equal(empty->data, "\x81\x00", 2);
    ws_frameset_free(&set);
    free(m);
}

static void test_deflated_per_window(void **state)
{
    (void)state;
    const size_t len = 20000;
    uint8_t *m = message(len);
    struct ws_deflate_shared *z = ws_deflate_shared_new(8, 6);
    struct ws_buf scratch;
    ws_buf_init(&scratch);
    ws_buf_append(&scratch, "stale bytes", 11); /* whatever the scratch held is not sent */

    struct ws_frameset set;
    ws_frameset_init(&set, WS_OP_TEXT, m, len, z, &scratch);
    struct ws_shared *made[WS_DEFLATE_MAX_WINDOW_BITS + 1] = {0};
    for (int bits = WS_DEFLATE_MIN_SERVER_WINDOW_BITS; bits <= WS_DEFLATE_MAX_WINDOW_BITS; bits++) {
        struct ws_shared *s = ws_frameset_deflated(&set, bits);
        assert_non_null(s);
        made[bits] = s;
        assert_int_equal(s->refs, 1);
        /* RFC 7692 §6: RSV1 on the (only) frame, FIN, the opcode kept */
        assert_int_equal(s->data[0], 0x80 | 0x40 | WS_OP_TEXT);
        size_t n;
        const uint8_t *p = payload_of(s, &n);
        assert_true(n < len / 2); /* it did compress */
        /* inflating with the negotiated window itself proves the window was honoured */
        size_t got;
        uint8_t *back = inflate_payload(p, n, bits, len, &got);
        assert_int_equal(got, len);
        assert_memory_equal(back, m, len);
        free(back);
        for (int b = WS_DEFLATE_MIN_SERVER_WINDOW_BITS; b < bits; b++)
            assert_ptr_not_equal(made[b], s);
    }
    /* asked again, in another order: the same frames, not compressed again */
    for (int bits = WS_DEFLATE_MAX_WINDOW_BITS; bits >= WS_DEFLATE_MIN_SERVER_WINDOW_BITS; bits--)
        assert_ptr_equal(ws_frameset_deflated(&set, bits), made[bits]);
    /* the plain frame is independent of the compressed ones */
    struct ws_shared *plain = ws_frameset_plain(&set);
    assert_frame(plain, 0x81, m, len);
    for (int bits = WS_DEFLATE_MIN_SERVER_WINDOW_BITS; bits <= WS_DEFLATE_MAX_WINDOW_BITS; bits++)
        assert_ptr_not_equal(plain, made[bits]);

    ws_frameset_free(&set);
    ws_buf_reset(&scratch);
    ws_deflate_shared_free(z);
    free(m);
}

/* Each window size is really used: a message that repeats at a distance of 20000 bytes compresses
 * only with a 32 KiB window, and every frame inflates within its own window. */
static void test_deflated_window_honoured(void **state)
{
    (void)state;
    const size_t half = 20000;
    uint8_t *m = malloc(2 * half);
    assert_non_null(m);
    uint32_t x = 12345;
    for (size_t i = 0; i < half; i++) {
        x = x * 1103515245u + 12345u;
        m[i] = m[half + i] = (uint8_t)(x >> 24);
    }
    struct ws_deflate_shared *z = ws_deflate_shared_new(8, 6);
    struct ws_buf scratch;
    ws_buf_init(&scratch);
    struct ws_frameset set;
    ws_frameset_init(&set, WS_OP_BINARY, m, 2 * half, z, &scratch);
    for (int bits = WS_DEFLATE_MIN_SERVER_WINDOW_BITS; bits <= WS_DEFLATE_MAX_WINDOW_BITS; bits++) {
        size_t n, got;
        const uint8_t *p = payload_of(ws_frameset_deflated(&set, bits), &n);
        if (bits == 15)
            assert_true(n < half + half / 4);
        else
            assert_true(n > 2 * half - half / 4);
        uint8_t *back = inflate_payload(p, n, bits, 2 * half, &got);
        assert_int_equal(got, 2 * half);
        assert_memory_equal(back, m, 2 * half);
        free(back);
    }
    ws_frameset_free(&set);
    ws_buf_reset(&scratch);
    ws_deflate_shared_free(z);
    free(m);
}

static void test_deflated_small_and_empty(void **state)
{
    (void)state;
    struct ws_deflate_shared *z = ws_deflate_shared_new(8, 6);
    struct ws_buf scratch;
    ws_buf_init(&scratch);

    /* two sets in a row through the same scratch: each frame holds its own message */
    struct ws_frameset a, b;
    ws_frameset_init(&a, WS_OP_BINARY, "hello", 5, z, &scratch);
    ws_frameset_init(&b, WS_OP_BINARY, "world!", 6, z, &scratch);
    struct ws_shared *fa = ws_frameset_deflated(&a, 15);
    struct ws_shared *fb = ws_frameset_deflated(&b, 15);
    assert_int_equal(fa->data[0], 0xc2);
    size_t n, got;
    const uint8_t *p = payload_of(fa, &n);
    uint8_t *back = inflate_payload(p, n, 15, 64, &got);
    assert_int_equal(got, 5);
    assert_memory_equal(back, "hello", 5);
    free(back);
    p = payload_of(fb, &n);
    back = inflate_payload(p, n, 15, 64, &got);
    assert_int_equal(got, 6);
    assert_memory_equal(back, "world!", 6);
    free(back);
    ws_frameset_free(&a);
    ws_frameset_free(&b);

    /* an empty message still inflates to nothing */
    struct ws_frameset e;
    ws_frameset_init(&e, WS_OP_TEXT, "", 0, z, &scratch);
    struct ws_shared *fe = ws_frameset_deflated(&e, 9);
    assert_int_equal(fe->data[0], 0xc1);
    p = payload_of(fe, &n);
    assert_true(n >= 1);
    back = inflate_payload(p, n, 9, 64, &got);
    assert_int_equal(got, 0);
    free(back);
    ws_frameset_free(&e);

    ws_buf_reset(&scratch);
    ws_deflate_shared_free(z);
}

static void test_free_drops_references(void **state)
{
    (void)state;
    uint8_t *m = message(4000);
    struct ws_deflate_shared *z = ws_deflate_shared_new(8, 6);
    struct ws_buf scratch;
    ws_buf_init(&scratch);
    struct ws_frameset set;
    ws_frameset_init(&set, WS_OP_TEXT, m, 4000, z, &scratch);

    /* holders take references; the set's own go with free */
    struct ws_shared *plain = ws_shared_ref(ws_frameset_plain(&set));
    struct ws_shared *d12 = ws_frameset_deflated(&set, 12);
    ws_shared_ref(d12);
    ws_shared_ref(d12);
    (void)ws_frameset_deflated(&set, 10); /* nobody else holds this one: freed with the set */
    assert_int_equal(plain->refs, 2);
    assert_int_equal(d12->refs, 3);

    /* a send queue holds one too */
    struct ws_chunk_pool pool;
    struct ws_outq q;
    ws_chunk_pool_init(&pool, 4);
    ws_outq_init(&q);
    ws_outq_append_shared(&q, &pool, plain);
    assert_int_equal(plain->refs, 3);

    ws_frameset_free(&set);
    assert_null(set.plain);
    for (size_t i = 0; i <= WS_DEFLATE_MAX_WINDOW_BITS; i++)
        assert_null(set.deflated[i]);
    assert_int_equal(plain->refs, 2);
    assert_int_equal(d12->refs, 2);
    assert_frame(plain, 0x81, m, 4000); /* still whole */
    ws_frameset_free(&set);             /* a freed set frees nothing twice */
    assert_int_equal(plain->refs, 2);

    ws_outq_clear(&q, &pool);
    assert_int_equal(plain->refs, 1);
    ws_shared_unref(plain);
    ws_shared_unref(d12);
    ws_shared_unref(d12); /* the last reference: freed (ASan sees any leak or double free) */

    ws_chunk_pool_free(&pool);
    ws_buf_reset(&scratch);
    ws_deflate_shared_free(z);
    free(m);
}

static void test_encode(void **state)
{
    (void)state;
    struct ws_shared *s = ws_frameset_encode(WS_OP_CLOSE, 0, "\x03\xe8", 2);
    assert_int_equal(s->refs, 1);
    assert_int_equal(s->len, 4);
    assert_memory_equal(s->data, "\x88\x02\x03\xe8", 4);
    ws_shared_unref(s);

    s = ws_frameset_encode(WS_OP_PING, 0, NULL, 0);
    assert_int_equal(s->len, 2);
    assert_memory_equal(s->data, "\x89\x00", 2);
    ws_shared_unref(s);

    s = ws_frameset_encode(WS_OP_BINARY, WS_FRAME_RSV1, "ab", 2);
    assert_memory_equal(s->data,
                        "\xc2\x02"
                        "ab",
                        4);
    ws_shared_unref(s);

    s = ws_frameset_encode(WS_OP_PONG, WS_FRAME_RSV1 | 0x2 | 0x1, "", 0);
    assert_memory_equal(s->data, "\xfa\x00", 2); /* all three RSV bits */
    ws_shared_unref(s);

    uint8_t *m = message(70000);
    s = ws_frameset_encode(WS_OP_TEXT, 0, m, 70000);
    assert_frame(s, 0x81, m, 70000);
    assert_memory_equal(s->data, "\x81\x7f\0\0\0\0\0\x01\x11\x70", 10);
    ws_shared_unref(s);
    free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_shared_once),
        cmocka_unit_test(test_plain_lengths),
        cmocka_unit_test(test_deflated_per_window),
        cmocka_unit_test(test_deflated_window_honoured),
        cmocka_unit_test(test_deflated_small_and_empty),
        cmocka_unit_test(test_free_drops_references),
        cmocka_unit_test(test_encode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
