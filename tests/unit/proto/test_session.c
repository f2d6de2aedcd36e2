/* Unit tests for the session: masked client frames built here go through ws_session_feed and the
 * resulting events are checked byte for byte, including every split of a multi-message stream.
 * No sockets: the session is pure. */
#include "ws/err.h"
#include "ws/session.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t client_mask[4] = {0x37, 0xfa, 0x21, 0x3d};

/* Appends one masked client frame (RFC 6455 §5.3) to b. */
static void add_frame(struct ws_buf *b, bool fin, uint8_t op, const void *payload, size_t len)
{
    ws_buf_reserve(b, WS_FRAME_MAX_HEADER + len);
    size_t h = ws_frame_encode_header(b->data + b->len, fin, 0, op, len, client_mask);
    if (len > 0)
        memcpy(b->data + b->len + h, payload, len);
    ws_frame_mask(b->data + b->len + h, len, client_mask, 0);
    b->len += h + len;
}

static void add_str(struct ws_buf *b, bool fin, uint8_t op, const char *s)
{
    add_frame(b, fin, op, s, strlen(s));
}

/* A close frame with a 2-byte code and a reason. */
static void add_close(struct ws_buf *b, int code, const void *reason, size_t reason_len)
{
    uint8_t p[WS_FRAME_MAX_CONTROL_PAYLOAD];
    p[0] = (uint8_t)(code >> 8);
    p[1] = (uint8_t)code;
    memcpy(p + 2, reason, reason_len);
    add_frame(b, true, WS_OP_CLOSE, p, 2 + reason_len);
}

/* One event, copied out of the session's or the caller's buffer. */
struct rec {
    enum ws_session_event_type type;
    uint8_t opcode;
    uint16_t code;
    size_t len;
    uint8_t *data;
};

struct log {
    struct rec ev[64];
    size_t n;
    int rc; /* WS_E_AGAIN after clean input, else the error */
};

static void log_free(struct log *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->ev[i].data);
    l->n = 0;
}

static void record(struct log *l, const struct ws_session_event *ev)
{
    assert_true(l->n < sizeof l->ev / sizeof l->ev[0]);
    struct rec *r = &l->ev[l->n++];
    r->type = ev->type;
    r->opcode = ev->opcode;
    r->code = ev->code;
    r->len = ev->len;
    r->data = malloc(ev->len + 1);
    assert_non_null(r->data);
    if (ev->len > 0) {
        assert_non_null(ev->data);
        memcpy(r->data, ev->data, ev->len);
    }
}

/* Feeds data[0..len) the way a connection does: one event per call, advancing by *used, until
 * WS_E_AGAIN or an error. Returns that final code. */
static int feed_all(struct ws_session *s, uint8_t *data, size_t len, struct log *l)
{
    size_t off = 0;
    for (;;) {
        struct ws_session_event ev;
        size_t used = 0;
        int rc = ws_session_feed(s, data + off, len - off, &used, &ev);
        assert_true(used <= len - off);
        off += used;
        if (rc == 0) {
            record(l, &ev);
            continue;
        }
        if (rc == WS_E_AGAIN)
            assert_int_equal(off, len);
        l->rc = rc;
        return rc;
    }
}

/* Feeds one chunk from its own heap copy, freed afterwards, so the sanitizers catch an event
 * that points into an earlier chunk. */
static int feed_chunk(struct ws_session *s, const uint8_t *data, size_t len, struct log *l)
{
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, data, len);
    int rc = feed_all(s, copy, len, l);
    free(copy);
    return rc;
}

static void assert_rec(const struct rec *r, enum ws_session_event_type type, uint8_t opcode,
                       const void *data, size_t len)
{
    assert_int_equal(r->type, type);
    assert_int_equal(r->opcode, opcode);
    assert_int_equal(r->len, len);
    if (len > 0)
        assert_memory_equal(r->data, data, len);
}

static void assert_logs_equal(const struct log *a, const struct log *b)
{
    assert_int_equal(a->rc, b->rc);
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        assert_int_equal(a->ev[i].type, b->ev[i].type);
        assert_int_equal(a->ev[i].opcode, b->ev[i].opcode);
        assert_int_equal(a->ev[i].code, b->ev[i].code);
        assert_int_equal(a->ev[i].len, b->ev[i].len);
        if (a->ev[i].len > 0)
            assert_memory_equal(a->ev[i].data, b->ev[i].data, a->ev[i].len);
    }
}

/* Feeds a whole stream and expects it to end in err, with the given close code. */
static void expect_error(const struct ws_buf *b, size_t limit, int err, int close_code)
{
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, limit);
    assert_int_equal(feed_chunk(&s, b->data, b->len, &l), err);
    assert_int_equal(ws_err_close_code(err), close_code);
    log_free(&l);
    ws_session_reset(&s);
}

static bool points_into(const uint8_t *p, const uint8_t *base, size_t len)
{
    return p >= base && p < base + len;
}

/* --- single frames ----------------------------------------------------------------------- */

static void test_single_text_zero_copy(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, true, WS_OP_TEXT, "hello");
    struct ws_session s;
    ws_session_init(&s, 1024);
    struct ws_session_event ev;
    size_t used;
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), 0);
    assert_int_equal(used, b.len);
    assert_int_equal(ev.type, WS_SESSION_MESSAGE);
    assert_int_equal(ev.opcode, WS_OP_TEXT);
    assert_int_equal(ev.len, 5);
    assert_memory_equal(ev.data, "hello", 5);
    assert_true(points_into(ev.data, b.data, b.len)); /* no copy */
    assert_int_equal(s.msg.cap, 0);
    assert_int_equal(ws_session_feed(&s, b.data + used, 0, &used, &ev), WS_E_AGAIN);
    assert_int_equal(used, 0);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_single_binary_zero_copy(void **state)
{
    (void)state;
    uint8_t payload[300];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 7 + 0x80); /* not UTF-8, fine for binary */
    struct ws_buf b;
    ws_buf_init(&b);
    add_frame(&b, true, WS_OP_BINARY, payload, sizeof payload);
    struct ws_session s;
    ws_session_init(&s, 1024);
    struct ws_session_event ev;
    size_t used;
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), 0);
    assert_int_equal(used, b.len);
    assert_int_equal(ev.type, WS_SESSION_MESSAGE);
    assert_int_equal(ev.opcode, WS_OP_BINARY);
    assert_int_equal(ev.len, sizeof payload);
    assert_memory_equal(ev.data, payload, sizeof payload);
    assert_true(points_into(ev.data, b.data, b.len));
    assert_int_equal(s.msg.cap, 0);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

/* The header arrives in one call and the whole payload in the next: still no copy. */
static void test_zero_copy_header_in_earlier_call(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, true, WS_OP_TEXT, "split header");
    size_t hdr = 6; /* 2 + mask */
    struct ws_session s;
    ws_session_init(&s, 1024);
    struct ws_session_event ev;
    size_t used;
    assert_int_equal(ws_session_feed(&s, b.data, hdr, &used, &ev), WS_E_AGAIN);
    assert_int_equal(used, hdr);
    uint8_t second[64];
    memcpy(second, b.data + hdr, b.len - hdr);
    assert_int_equal(ws_session_feed(&s, second, b.len - hdr, &used, &ev), 0);
    assert_int_equal(used, b.len - hdr);
    assert_int_equal(ev.len, 12);
    assert_memory_equal(ev.data, "split header", 12);
    assert_true(points_into(ev.data, second, b.len - hdr));
    assert_int_equal(s.msg.cap, 0);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

/* A payload split across calls is copied and handed out from the session's buffer. */
static void test_payload_across_calls_is_copied(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, true, WS_OP_TEXT, "abcdefgh");
    struct ws_session s;
    ws_session_init(&s, 1024);
    struct ws_session_event ev;
    size_t used;
    assert_int_equal(ws_session_feed(&s, b.data, 6 + 3, &used, &ev), WS_E_AGAIN);
    assert_int_equal(ws_session_feed(&s, b.data + 9, b.len - 9, &used, &ev), 0);
    assert_int_equal(ev.len, 8);
    assert_memory_equal(ev.data, "abcdefgh", 8);
    assert_ptr_equal(ev.data, s.msg.data);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_empty_messages(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_frame(&b, true, WS_OP_TEXT, NULL, 0);
    add_frame(&b, true, WS_OP_BINARY, NULL, 0);
    add_frame(&b, false, WS_OP_TEXT, NULL, 0);
    add_frame(&b, true, WS_OP_CONTINUATION, NULL, 0);
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 0); /* a limit of 0 still admits empty messages */
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 3);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_TEXT, "", 0);
    assert_rec(&l.ev[1], WS_SESSION_MESSAGE, WS_OP_BINARY, "", 0);
    assert_rec(&l.ev[2], WS_SESSION_MESSAGE, WS_OP_TEXT, "", 0);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

/* --- fragmentation (RFC 6455 §5.4) ------------------------------------------------------- */

static void test_fragmented_two_and_three(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, false, WS_OP_TEXT, "Hel");
    add_str(&b, true, WS_OP_CONTINUATION, "lo");
    add_str(&b, false, WS_OP_BINARY, "ab");
    add_str(&b, false, WS_OP_CONTINUATION, "cd");
    add_str(&b, true, WS_OP_CONTINUATION, "ef");
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 1024);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 2);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_TEXT, "Hello", 5);
    assert_rec(&l.ev[1], WS_SESSION_MESSAGE, WS_OP_BINARY, "abcdef", 6);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_fragmented_many(void **state)
{
    (void)state;
    struct ws_buf b, want;
    ws_buf_init(&b);
    ws_buf_init(&want);
    for (int i = 0; i < 200; i++) {
        uint8_t frag[17];
        size_t n = (size_t)(i % 17);
        for (size_t k = 0; k < n; k++)
            frag[k] = (uint8_t)('a' + (i + k) % 26);
        add_frame(&b, i == 199, i == 0 ? WS_OP_TEXT : WS_OP_CONTINUATION, frag, n);
        ws_buf_append(&want, frag, n);
    }
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, want.len);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 1);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_TEXT, want.data, want.len);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
    ws_buf_reset(&want);
}

static void test_fragmented_zero_length_fragments(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    /* empty first, empty middle, empty last */
    add_frame(&b, false, WS_OP_BINARY, NULL, 0);
    add_str(&b, false, WS_OP_CONTINUATION, "xy");
    add_frame(&b, false, WS_OP_CONTINUATION, NULL, 0);
    add_str(&b, false, WS_OP_CONTINUATION, "z");
    add_frame(&b, true, WS_OP_CONTINUATION, NULL, 0);
    /* all empty but the last: the message is one span and needs no copy */
    add_frame(&b, false, WS_OP_TEXT, NULL, 0);
    add_frame(&b, false, WS_OP_CONTINUATION, NULL, 0);
    add_str(&b, true, WS_OP_CONTINUATION, "last");
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 1024);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 2);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_BINARY, "xyz", 3);
    assert_rec(&l.ev[1], WS_SESSION_MESSAGE, WS_OP_TEXT, "last", 4);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

/* RFC 6455 §5.4: control frames may be injected between fragments. */
static void test_control_between_fragments(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, false, WS_OP_TEXT, "Hel");
    add_str(&b, true, WS_OP_PING, "p1");
    add_str(&b, false, WS_OP_CONTINUATION, "lo ");
    add_str(&b, true, WS_OP_PONG, "q");
    add_frame(&b, true, WS_OP_PING, NULL, 0);
    add_str(&b, true, WS_OP_CONTINUATION, "world");
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 1024);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 4);
    assert_rec(&l.ev[0], WS_SESSION_PING, WS_OP_PING, "p1", 2);
    assert_rec(&l.ev[1], WS_SESSION_PONG, WS_OP_PONG, "q", 1);
    assert_rec(&l.ev[2], WS_SESSION_PING, WS_OP_PING, "", 0);
    assert_rec(&l.ev[3], WS_SESSION_MESSAGE, WS_OP_TEXT, "Hello world", 11);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_close_between_fragments(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, false, WS_OP_TEXT, "never");
    add_close(&b, 1000, "bye", 3);
    add_str(&b, true, WS_OP_CONTINUATION, " finished");
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 1024);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 1);
    assert_rec(&l.ev[0], WS_SESSION_CLOSE, WS_OP_CLOSE, "bye", 3);
    assert_int_equal(l.ev[0].code, 1000);
    assert_int_equal(s.close_state, WS_CLOSE_RECEIVED);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_unexpected_continuation(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, true, WS_OP_CONTINUATION, "orphan");
    expect_error(&b, 1024, WS_E_UNEXPECTED_CONTINUATION, 1002);
    b.len = 0;
    add_str(&b, true, WS_OP_TEXT, "done");
    add_str(&b, false, WS_OP_CONTINUATION, "orphan");
    expect_error(&b, 1024, WS_E_UNEXPECTED_CONTINUATION, 1002);
    ws_buf_reset(&b);
}

static void test_new_data_frame_during_message(void **state)
{
    (void)state;
    static const uint8_t ops[][2] = {{WS_OP_TEXT, WS_OP_BINARY},
                                     {WS_OP_TEXT, WS_OP_TEXT},
                                     {WS_OP_BINARY, WS_OP_TEXT},
                                     {WS_OP_BINARY, WS_OP_BINARY}};
    for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
        struct ws_buf b;
        ws_buf_init(&b);
        add_str(&b, false, ops[i][0], "first");
        add_str(&b, true, ops[i][1], "second");
        expect_error(&b, 1024, WS_E_EXPECTED_CONTINUATION, 1002);
        ws_buf_reset(&b);
    }
}

/* --- UTF-8 (RFC 6455 §8.1) --------------------------------------------------------------- */

static void test_utf8_split_across_fragments(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    /* U+20AC E2 82 AC, one byte per fragment */
    add_str(&b, false, WS_OP_TEXT, "\xe2");
    add_str(&b, false, WS_OP_CONTINUATION, "\x82");
    add_str(&b, true, WS_OP_CONTINUATION, "\xac");
    /* U+1F600 F0 9F 98 80 split 1+3 then a 2-byte sequence split 1+1 */
    add_str(&b, false, WS_OP_TEXT, "a\xf0");
    add_str(&b, false, WS_OP_CONTINUATION, "\x9f\x98\x80\xc3");
    add_str(&b, true, WS_OP_CONTINUATION, "\xa9z");
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 1024);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 2);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_TEXT, "\xe2\x82\xac", 3);
    assert_rec(&l.ev[1], WS_SESSION_MESSAGE, WS_OP_TEXT, "a\xf0\x9f\x98\x80\xc3\xa9z", 8);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

/* The first fragment is already impossible: the error comes before anything else is fed. */
static void test_utf8_fail_fast_first_fragment(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "ab\xff",         /* never valid */
        "\xc0\xaf",       /* overlong */
        "ok\xed\xa0",     /* surrogate U+D800 */
        "\xf4\x90",       /* above U+10FFFF */
        "\xe2\x82\x41",   /* continuation expected */
        "valid \x80 then" /* stray continuation */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct ws_buf b;
        ws_buf_init(&b);
        add_str(&b, false, WS_OP_TEXT, bad[i]);
        struct ws_session s;
        struct log l = {0};
        ws_session_init(&s, 1024);
        int rc = feed_chunk(&s, b.data, b.len, &l);
        assert_int_equal(rc, WS_E_UTF8);
        assert_int_equal(ws_err_close_code(rc), 1007);
        assert_int_equal(l.n, 0);
        log_free(&l);
        ws_session_reset(&s);
        ws_buf_reset(&b);
    }
    /* Within one frame too: the bad byte is in the first part of the payload, the rest of the
     * frame has not arrived. */
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, true, WS_OP_TEXT, "\xff and much more to come");
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 1024);
    assert_int_equal(feed_chunk(&s, b.data, 6 + 1, &l), WS_E_UTF8);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_utf8_truncated_at_end(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, true, WS_OP_TEXT, "a\xe2\x82");
    expect_error(&b, 1024, WS_E_UTF8, 1007);
    b.len = 0;
    add_str(&b, false, WS_OP_TEXT, "\xf0\x9f");
    add_str(&b, false, WS_OP_CONTINUATION, "\x98");
    add_frame(&b, true, WS_OP_CONTINUATION, NULL, 0);
    expect_error(&b, 1024, WS_E_UTF8, 1007);
    ws_buf_reset(&b);
}

/* Binary messages are not UTF-8 checked. */
static void test_binary_not_validated(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, false, WS_OP_BINARY, "\xff\xe2");
    add_str(&b, true, WS_OP_CONTINUATION, "\xc0");
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 1024);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 1);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_BINARY, "\xff\xe2\xc0", 3);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

/* --- size limit (SPEC §3: 1009, checked before buffering) -------------------------------- */

static void test_size_limit_single_frame(void **state)
{
    (void)state;
    uint8_t payload[101];
    memset(payload, 'x', sizeof payload);
    struct ws_buf b;
    ws_buf_init(&b);
    add_frame(&b, true, WS_OP_TEXT, payload, 100);
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 100);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 1);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_TEXT, payload, 100);
    log_free(&l);
    ws_session_reset(&s);

    b.len = 0;
    add_frame(&b, true, WS_OP_BINARY, payload, 101);
    ws_session_init(&s, 100);
    size_t used;
    struct ws_session_event ev;
    int rc = ws_session_feed(&s, b.data, b.len, &used, &ev);
    assert_int_equal(rc, WS_E_MESSAGE_TOO_BIG);
    assert_int_equal(ws_err_close_code(rc), 1009);
    assert_int_equal(used, 6); /* stopped at the header */
    assert_int_equal(s.msg.cap, 0);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_size_limit_fragmented(void **state)
{
    (void)state;
    uint8_t payload[100];
    memset(payload, 'y', sizeof payload);
    struct ws_buf b;
    ws_buf_init(&b);
    /* exactly at the limit, with a trailing empty fragment */
    add_frame(&b, false, WS_OP_BINARY, payload, 40);
    add_frame(&b, false, WS_OP_CONTINUATION, payload, 60);
    add_frame(&b, true, WS_OP_CONTINUATION, NULL, 0);
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 100);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 1);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_BINARY, payload, 100);
    log_free(&l);
    ws_session_reset(&s);

    /* one over: refused at the second fragment's header, its payload never buffered */
    b.len = 0;
    add_frame(&b, false, WS_OP_TEXT, payload, 40);
    size_t first = b.len;
    add_frame(&b, true, WS_OP_CONTINUATION, payload, 61);
    ws_session_init(&s, 100);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_MESSAGE_TOO_BIG);
    assert_int_equal(s.msg.len, 40);
    ws_session_reset(&s);

    ws_session_init(&s, 100);
    size_t used;
    struct ws_session_event ev;
    assert_int_equal(ws_session_feed(&s, b.data, first, &used, &ev), WS_E_AGAIN);
    assert_int_equal(ws_session_feed(&s, b.data + first, b.len - first, &used, &ev),
                     WS_E_MESSAGE_TOO_BIG);
    assert_int_equal(used, 6);
    ws_session_reset(&s);

    /* the limit counts the whole message, also after fragments at the limit */
    b.len = 0;
    add_frame(&b, false, WS_OP_TEXT, payload, 100);
    add_frame(&b, true, WS_OP_CONTINUATION, payload, 1);
    expect_error(&b, 100, WS_E_MESSAGE_TOO_BIG, 1009);
    ws_buf_reset(&b);
}

/* A header declaring 2^62 bytes fails at once and nothing is allocated. */
static void test_huge_length_header(void **state)
{
    (void)state;
    uint8_t hdr[WS_FRAME_MAX_HEADER];
    size_t n = ws_frame_encode_header(hdr, true, 0, WS_OP_BINARY, 1ull << 62, client_mask);
    assert_int_equal(n, 14);
    struct ws_session s;
    ws_session_init(&s, 16 * 1024 * 1024);
    size_t used;
    struct ws_session_event ev;
    int rc = ws_session_feed(&s, hdr, n, &used, &ev);
    assert_int_equal(rc, WS_E_MESSAGE_TOO_BIG);
    assert_int_equal(ws_err_close_code(rc), 1009);
    assert_int_equal(used, n);
    assert_int_equal(s.msg.cap, 0);
    assert_null(s.msg.data);
    ws_session_reset(&s);

    /* also as a continuation of a message in progress */
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, false, WS_OP_TEXT, "start");
    ws_buf_reserve(&b, WS_FRAME_MAX_HEADER);
    uint8_t *p = b.data + b.len;
    b.len += ws_frame_encode_header(p, true, 0, WS_OP_CONTINUATION, 1ull << 62, client_mask);
    expect_error(&b, 16 * 1024 * 1024, WS_E_MESSAGE_TOO_BIG, 1009);
    ws_buf_reset(&b);
}

/* A big message's buffer is freed at the next call; a small one's is kept for reuse. */
static void test_message_buffer_release(void **state)
{
    (void)state;
    size_t big = 100 * 1024;
    uint8_t *payload = calloc(1, big);
    assert_non_null(payload);
    struct ws_buf b;
    ws_buf_init(&b);
    add_frame(&b, false, WS_OP_BINARY, payload, big / 2);
    add_frame(&b, true, WS_OP_CONTINUATION, payload, big / 2);
    struct ws_session s;
    ws_session_init(&s, big);
    size_t used;
    struct ws_session_event ev;
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), 0);
    assert_int_equal(used, b.len);
    assert_int_equal(ev.len, big);
    assert_ptr_equal(ev.data, s.msg.data);
    assert_true(s.msg.cap >= big);
    assert_int_equal(ws_session_feed(&s, b.data, 0, &used, &ev), WS_E_AGAIN);
    assert_int_equal(s.msg.cap, 0);

    b.len = 0;
    add_str(&b, false, WS_OP_TEXT, "sm");
    add_str(&b, true, WS_OP_CONTINUATION, "all");
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), 0);
    assert_int_equal(ev.len, 5);
    assert_memory_equal(ev.data, "small", 5);
    assert_ptr_equal(ev.data, s.msg.data);
    assert_int_equal(ws_session_feed(&s, b.data, 0, &used, &ev), WS_E_AGAIN);
    assert_int_equal(s.msg.len, 0);
    assert_true(s.msg.cap > 0);
    ws_session_reset(&s);
    assert_int_equal(s.msg.cap, 0);
    ws_buf_reset(&b);
    free(payload);
}

/* --- control frames (RFC 6455 §5.5) ------------------------------------------------------ */

static void test_control_split_across_feeds(void **state)
{
    (void)state;
    uint8_t payload[WS_FRAME_MAX_CONTROL_PAYLOAD];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 13);
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, false, WS_OP_BINARY, "frag");
    size_t start = b.len;
    add_frame(&b, true, WS_OP_PING, payload, sizeof payload);
    size_t end = b.len;
    add_str(&b, true, WS_OP_CONTINUATION, "ment");
    for (size_t cut = start + 1; cut < end; cut++) {
        struct ws_session s;
        struct log l = {0};
        ws_session_init(&s, 1024);
        assert_int_equal(feed_chunk(&s, b.data, cut, &l), WS_E_AGAIN);
        assert_int_equal(l.n, 0);
        assert_int_equal(feed_chunk(&s, b.data + cut, b.len - cut, &l), WS_E_AGAIN);
        assert_int_equal(l.n, 2);
        assert_rec(&l.ev[0], WS_SESSION_PING, WS_OP_PING, payload, sizeof payload);
        assert_rec(&l.ev[1], WS_SESSION_MESSAGE, WS_OP_BINARY, "fragment", 8);
        log_free(&l);
        ws_session_reset(&s);
    }
    /* gathered in s->ctl when the payload itself is split */
    struct ws_session s;
    ws_session_init(&s, 1024);
    size_t used;
    struct ws_session_event ev;
    uint8_t *copy = malloc(b.len);
    assert_non_null(copy);
    memcpy(copy, b.data, b.len);
    assert_int_equal(ws_session_feed(&s, copy, end - 10, &used, &ev), WS_E_AGAIN);
    assert_int_equal(ws_session_feed(&s, copy + end - 10, b.len - (end - 10), &used, &ev), 0);
    assert_int_equal(ev.type, WS_SESSION_PING);
    assert_ptr_equal(ev.data, s.ctl);
    assert_int_equal(ev.len, sizeof payload);
    assert_memory_equal(ev.data, payload, sizeof payload);
    free(copy);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_ping_pong_zero_copy(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, true, WS_OP_PING, "are you there");
    add_str(&b, true, WS_OP_PONG, "yes");
    struct ws_session s;
    ws_session_init(&s, 1024);
    size_t used;
    struct ws_session_event ev;
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), 0);
    assert_int_equal(ev.type, WS_SESSION_PING);
    assert_int_equal(ev.len, 13);
    assert_memory_equal(ev.data, "are you there", 13);
    assert_true(points_into(ev.data, b.data, b.len));
    size_t off = used;
    assert_int_equal(ws_session_feed(&s, b.data + off, b.len - off, &used, &ev), 0);
    assert_int_equal(ev.type, WS_SESSION_PONG);
    assert_int_equal(ev.opcode, WS_OP_PONG);
    assert_memory_equal(ev.data, "yes", 3);
    assert_int_equal(off + used, b.len);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

/* Decoder violations come through unchanged (1002). */
static void test_frame_errors_propagate(void **state)
{
    (void)state;
    uint8_t unmasked[] = {0x81, 0x02, 'h', 'i'};
    struct ws_session s;
    size_t used;
    struct ws_session_event ev;
    ws_session_init(&s, 1024);
    assert_int_equal(ws_session_feed(&s, unmasked, sizeof unmasked, &used, &ev), WS_E_UNMASKED);
    ws_session_reset(&s);
    uint8_t rsv1[] = {0xc1, 0x80, 0, 0, 0, 0};
    ws_session_init(&s, 1024);
    assert_int_equal(ws_session_feed(&s, rsv1, sizeof rsv1, &used, &ev), WS_E_RSV);
    assert_int_equal(ws_err_close_code(WS_E_RSV), 1002);
    ws_session_reset(&s);
}

/* --- close (RFC 6455 §5.5.1, §7) --------------------------------------------------------- */

static void test_close_valid_codes(void **state)
{
    (void)state;
    static const int codes[] = {1000, 1001, 1003, 1007, 1011, 1012, 3000, 4999};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        struct ws_buf b;
        ws_buf_init(&b);
        add_close(&b, codes[i], "r\xc3\xa9son", 7);
        struct ws_session s;
        struct log l = {0};
        ws_session_init(&s, 1024);
        assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
        assert_int_equal(l.n, 1);
        assert_rec(&l.ev[0], WS_SESSION_CLOSE, WS_OP_CLOSE, "r\xc3\xa9son", 7);
        assert_int_equal(l.ev[0].code, codes[i]);
        assert_int_equal(s.close_state, WS_CLOSE_RECEIVED);
        log_free(&l);
        ws_session_reset(&s);
        ws_buf_reset(&b);
    }
}

static void test_close_invalid_codes(void **state)
{
    (void)state;
    static const int codes[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        struct ws_buf b;
        ws_buf_init(&b);
        add_close(&b, codes[i], "", 0);
        expect_error(&b, 1024, WS_E_CLOSE_CODE, 1002);
        ws_buf_reset(&b);
    }
}

static void test_close_one_byte_payload(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_frame(&b, true, WS_OP_CLOSE, "\x03", 1);
    expect_error(&b, 1024, WS_E_CLOSE_PAYLOAD, 1002);
    ws_buf_reset(&b);
}

static void test_close_reason_invalid_utf8(void **state)
{
    (void)state;
    static const char *const bad[] = {"\xff", "ok\xe2\x82", "\xed\xa0\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct ws_buf b;
        ws_buf_init(&b);
        add_close(&b, 1000, bad[i], strlen(bad[i]));
        expect_error(&b, 1024, WS_E_CLOSE_REASON_UTF8, 1007);
        ws_buf_reset(&b);
    }
}

static void test_close_empty_payload(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_frame(&b, true, WS_OP_CLOSE, NULL, 0);
    struct ws_session s;
    ws_session_init(&s, 1024);
    size_t used;
    struct ws_session_event ev;
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), 0);
    assert_int_equal(used, b.len);
    assert_int_equal(ev.type, WS_SESSION_CLOSE);
    assert_int_equal(ev.code, 1005);
    assert_int_equal(ev.len, 0);
    assert_int_equal(s.close_state, WS_CLOSE_RECEIVED);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_close_state_transitions(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, true, WS_OP_TEXT, "still delivered");
    add_close(&b, 1001, "", 0);

    /* we close first: data keeps arriving until the peer's close */
    struct ws_session s;
    struct log l = {0};
    ws_session_init(&s, 1024);
    assert_int_equal(s.close_state, WS_CLOSE_NONE);
    assert_int_equal(ws_session_close_sent(&s), WS_CLOSE_SENT);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 2);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_TEXT, "still delivered", 15);
    assert_int_equal(l.ev[1].type, WS_SESSION_CLOSE);
    assert_int_equal(l.ev[1].code, 1001);
    assert_int_equal(s.close_state, WS_CLOSE_DONE);
    log_free(&l);
    ws_session_reset(&s);

    /* the peer closes first */
    ws_session_init(&s, 1024);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(s.close_state, WS_CLOSE_RECEIVED);
    assert_int_equal(ws_session_close_sent(&s), WS_CLOSE_DONE);
    assert_int_equal(s.close_state, WS_CLOSE_DONE);
    log_free(&l);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

static void test_bytes_after_close_ignored(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_close(&b, 1000, "", 0);
    size_t close_len = b.len;
    add_str(&b, true, WS_OP_TEXT, "ignored");
    ws_buf_append(&b, "\x81\x05junk\xff\xff", 8); /* unmasked: an error if it were parsed */
    struct ws_session s;
    ws_session_init(&s, 1024);
    size_t used;
    struct ws_session_event ev;
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), 0);
    assert_int_equal(used, close_len);
    assert_int_equal(ev.type, WS_SESSION_CLOSE);
    assert_int_equal(ws_session_feed(&s, b.data + used, b.len - used, &used, &ev), WS_E_AGAIN);
    assert_int_equal(used, b.len - close_len);
    assert_int_equal(s.err, 0);
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), WS_E_AGAIN);
    assert_int_equal(used, b.len);
    /* still ignored once our close went out too */
    assert_int_equal(ws_session_close_sent(&s), WS_CLOSE_DONE);
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), WS_E_AGAIN);
    assert_int_equal(used, b.len);
    ws_session_reset(&s);
    ws_buf_reset(&b);
}

/* --- streams and errors ------------------------------------------------------------------ */

/* A stream with every kind of event; feeding it in any split must give the same events. */
static void build_stream(struct ws_buf *b)
{
    uint8_t big[300];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)('A' + i % 26);
    add_str(b, true, WS_OP_TEXT, "first");
    add_frame(b, false, WS_OP_BINARY, big, 130); /* 16-bit length */
    add_str(b, true, WS_OP_PING, "ping!");
    add_frame(b, false, WS_OP_CONTINUATION, NULL, 0);
    add_frame(b, true, WS_OP_CONTINUATION, big + 130, 170);
    add_frame(b, true, WS_OP_TEXT, NULL, 0);
    add_str(b, false, WS_OP_TEXT, "caf\xc3");
    add_str(b, true, WS_OP_PONG, "");
    add_str(b, true, WS_OP_CONTINUATION, "\xa9 \xf0\x9f\x98\x80");
    add_frame(b, true, WS_OP_BINARY, big, 7);
    add_close(b, 4000, "done", 4);
    add_str(b, true, WS_OP_TEXT, "after close");
}

static void check_stream_log(const struct log *l)
{
    assert_int_equal(l->rc, WS_E_AGAIN);
    assert_int_equal(l->n, 8);
    assert_rec(&l->ev[0], WS_SESSION_MESSAGE, WS_OP_TEXT, "first", 5);
    assert_rec(&l->ev[1], WS_SESSION_PING, WS_OP_PING, "ping!", 5);
    uint8_t big[300];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (uint8_t)('A' + i % 26);
    assert_rec(&l->ev[2], WS_SESSION_MESSAGE, WS_OP_BINARY, big, sizeof big);
    assert_rec(&l->ev[3], WS_SESSION_MESSAGE, WS_OP_TEXT, "", 0);
    assert_rec(&l->ev[4], WS_SESSION_PONG, WS_OP_PONG, "", 0);
    assert_rec(&l->ev[5], WS_SESSION_MESSAGE, WS_OP_TEXT, "caf\xc3\xa9 \xf0\x9f\x98\x80", 10);
    assert_rec(&l->ev[6], WS_SESSION_MESSAGE, WS_OP_BINARY, big, 7);
    assert_rec(&l->ev[7], WS_SESSION_CLOSE, WS_OP_CLOSE, "done", 4);
    assert_int_equal(l->ev[7].code, 4000);
}

static void test_every_split_same_events(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    build_stream(&b);

    struct ws_session s;
    struct log whole = {0};
    ws_session_init(&s, 1024);
    feed_chunk(&s, b.data, b.len, &whole);
    ws_session_reset(&s);
    check_stream_log(&whole);

    for (size_t cut = 0; cut <= b.len; cut++) {
        struct log l = {0};
        ws_session_init(&s, 1024);
        feed_chunk(&s, b.data, cut, &l);
        feed_chunk(&s, b.data + cut, b.len - cut, &l);
        assert_logs_equal(&whole, &l);
        log_free(&l);
        ws_session_reset(&s);
    }

    /* byte by byte */
    struct log l = {0};
    ws_session_init(&s, 1024);
    for (size_t i = 0; i < b.len; i++)
        feed_chunk(&s, b.data + i, 1, &l);
    assert_logs_equal(&whole, &l);
    log_free(&l);
    ws_session_reset(&s);

    /* every pair of cuts, three chunks */
    for (size_t i = 0; i <= b.len; i += 3) {
        for (size_t j = i; j <= b.len; j += 5) {
            ws_session_init(&s, 1024);
            feed_chunk(&s, b.data, i, &l);
            feed_chunk(&s, b.data + i, j - i, &l);
            feed_chunk(&s, b.data + j, b.len - j, &l);
            assert_logs_equal(&whole, &l);
            log_free(&l);
            ws_session_reset(&s);
        }
    }
    log_free(&whole);
    ws_buf_reset(&b);
}

/* A stream that fails part way: every split gives the same events, then the same error. */
static void test_every_split_same_error(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_str(&b, true, WS_OP_BINARY, "ok");
    add_str(&b, false, WS_OP_TEXT, "caf");
    add_str(&b, true, WS_OP_PING, "p");
    add_str(&b, false, WS_OP_CONTINUATION, "\xc3\xa9\xc3");
    add_str(&b, false, WS_OP_CONTINUATION, "\x28 bad");
    add_str(&b, true, WS_OP_CONTINUATION, "never seen");

    struct ws_session s;
    struct log whole = {0};
    ws_session_init(&s, 1024);
    assert_int_equal(feed_chunk(&s, b.data, b.len, &whole), WS_E_UTF8);
    ws_session_reset(&s);
    assert_int_equal(whole.n, 2);
    assert_rec(&whole.ev[0], WS_SESSION_MESSAGE, WS_OP_BINARY, "ok", 2);
    assert_rec(&whole.ev[1], WS_SESSION_PING, WS_OP_PING, "p", 1);

    for (size_t cut = 0; cut <= b.len; cut++) {
        struct log l = {0};
        ws_session_init(&s, 1024);
        if (feed_chunk(&s, b.data, cut, &l) == WS_E_AGAIN)
            feed_chunk(&s, b.data + cut, b.len - cut, &l);
        assert_logs_equal(&whole, &l);
        log_free(&l);
        ws_session_reset(&s);
    }
    struct log l = {0};
    ws_session_init(&s, 1024);
    for (size_t i = 0; i < b.len && l.rc != WS_E_UTF8; i++)
        feed_chunk(&s, b.data + i, 1, &l);
    assert_logs_equal(&whole, &l);
    log_free(&l);
    ws_session_reset(&s);
    log_free(&whole);
    ws_buf_reset(&b);
}

static void test_errors_sticky(void **state)
{
    (void)state;
    struct ws_buf bad, good;
    ws_buf_init(&bad);
    ws_buf_init(&good);
    add_str(&bad, true, WS_OP_CONTINUATION, "x");
    add_str(&good, true, WS_OP_TEXT, "fine");
    struct ws_session s;
    ws_session_init(&s, 1024);
    size_t used;
    struct ws_session_event ev;
    assert_int_equal(ws_session_feed(&s, bad.data, bad.len, &used, &ev),
                     WS_E_UNEXPECTED_CONTINUATION);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(ws_session_feed(&s, good.data, good.len, &used, &ev),
                         WS_E_UNEXPECTED_CONTINUATION);
        assert_int_equal(used, 0);
    }
    ws_session_reset(&s);

    /* a UTF-8 error stays too, and init starts afresh */
    bad.len = 0;
    add_str(&bad, true, WS_OP_TEXT, "\xff");
    ws_session_init(&s, 1024);
    assert_int_equal(ws_session_feed(&s, bad.data, bad.len, &used, &ev), WS_E_UTF8);
    assert_int_equal(ws_session_feed(&s, good.data, good.len, &used, &ev), WS_E_UTF8);
    ws_session_reset(&s);
    ws_session_init(&s, 1024);
    assert_int_equal(ws_session_feed(&s, good.data, good.len, &used, &ev), 0);
    assert_int_equal(ev.type, WS_SESSION_MESSAGE);
    ws_session_reset(&s);
    ws_buf_reset(&bad);
    ws_buf_reset(&good);
}

/* --- close payloads and codes ------------------------------------------------------------ */

static void test_close_payload(void **state)
{
    (void)state;
    uint8_t out[WS_FRAME_MAX_CONTROL_PAYLOAD];
    assert_int_equal(ws_close_payload(out, 0, "ignored", 7), 0);
    assert_int_equal(ws_close_payload(out, 1000, NULL, 0), 2);
    assert_memory_equal(out, "\x03\xe8", 2);
    assert_int_equal(ws_close_payload(out, 4999, "bye", 3), 5);
    assert_memory_equal(out,
                        "\x13\x87"
                        "bye",
                        5);

    char reason[300];
    memset(reason, 'r', sizeof reason);
    assert_int_equal(ws_close_payload(out, 1001, reason, 123), 125); /* fits exactly */
    assert_int_equal(ws_close_payload(out, 1001, reason, 124), 125);
    assert_int_equal(ws_close_payload(out, 1001, reason, sizeof reason), 125);
    assert_memory_equal(out + 2, reason, 123);

    /* a 2-, 3- and 4-byte sequence straddling byte 123 of the reason is dropped whole */
    static const char *const seqs[] = {"\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (size_t k = 0; k < 3; k++) {
        size_t sl = strlen(seqs[k]);
        for (size_t at = 123 - sl + 1; at < 123; at++) {
            memset(reason, 'r', sizeof reason);
            memcpy(reason + at, seqs[k], sl);
            size_t n = ws_close_payload(out, 1000, reason, at + sl + 5);
            assert_int_equal(n, 2 + at);
            assert_int_equal(ws_utf8_validate(out + 2, n - 2), 0);
        }
        /* ending exactly at 123 it fits */
        memset(reason, 'r', sizeof reason);
        memcpy(reason + 123 - sl, seqs[k], sl);
        assert_int_equal(ws_close_payload(out, 1000, reason, 130), 125);
        assert_memory_equal(out + 2 + 123 - sl, seqs[k], sl);
    }
    /* all multibyte: 41 three-byte sequences is exactly 123 */
    for (size_t i = 0; i < 60; i++)
        memcpy(reason + 3 * i, "\xe2\x82\xac", 3);
    assert_int_equal(ws_close_payload(out, 1000, reason, 180), 125);
    assert_int_equal(ws_utf8_validate(out + 2, 123), 0);
    for (size_t i = 0; i < 75; i++)
        memcpy(reason + 4 * i, "\xf0\x9f\x98\x80", 4);
    assert_int_equal(ws_close_payload(out, 1000, reason, 300), 2 + 120);
    assert_int_equal(ws_utf8_validate(out + 2, 120), 0);
}

static void test_close_code_valid_table(void **state)
{
    (void)state;
    static const struct {
        int code;
        bool valid;
    } table[] = {
        {-1, false},   {0, false},    {999, false},  {1000, true},   {1001, true},   {1002, true},
        {1003, true},  {1004, false}, {1005, false}, {1006, false},  {1007, true},   {1008, true},
        {1009, true},  {1010, true},  {1011, true},  {1012, true},   {1013, true},   {1014, true},
        {1015, false}, {1016, false}, {2000, false}, {2999, false},  {3000, true},   {3999, true},
        {4000, true},  {4999, true},  {5000, false}, {65535, false}, {65536, false},
    };
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++) {
        if (ws_close_code_valid(table[i].code) != table[i].valid)
            fail_msg("code %d: expected %s", table[i].code, table[i].valid ? "valid" : "invalid");
    }
    size_t n = 0;
    for (int c = 0; c < 70000; c++)
        n += ws_close_code_valid(c);
    assert_int_equal(n, 4 + 8 + 2000);
}

/* --- fuzz regressions (tests/fuzz/fuzz_session.c) ----------------------------------------- */

/* Appends one masked client frame with RSV1 set (RFC 7692 §6: a compressed message's first). */
static void add_compressed(struct ws_buf *b, uint8_t op, const void *payload, size_t len)
{
    ws_buf_reserve(b, WS_FRAME_MAX_HEADER + len);
    size_t h = ws_frame_encode_header(b->data + b->len, true, WS_FRAME_RSV1, op, len, client_mask);
    if (len > 0)
        memcpy(b->data + b->len + h, payload, len);
    ws_frame_mask(b->data + b->len + h, len, client_mask, 0);
    b->len += h + len;
}

static void deflate_start(struct ws_deflate *d)
{
    struct ws_deflate_params p = {
        .server_no_context_takeover = true,
        .client_no_context_takeover = false,
        .server_max_window_bits = 15,
        .client_max_window_bits = 15,
        .mem_level = 8,
        .level = 6,
        .compress_min_size = 128,
    };
    ws_deflate_init(d, &p, NULL);
}

/* A compressed text message with an empty payload is an empty message (RFC 7692 §7.2.3.6 sends
 * 0x00, but an empty payload inflates to nothing too). It validated msg.data + 0 with msg.data
 * still NULL: pointer arithmetic on NULL, which the UBSan build reports. */
static void test_fuzz_deflate_empty_text(void **state)
{
    (void)state;
    struct ws_buf b;
    ws_buf_init(&b);
    add_compressed(&b, WS_OP_TEXT, NULL, 0);
    add_compressed(&b, WS_OP_TEXT, "\x00", 1);
    struct ws_deflate d;
    deflate_start(&d);
    struct ws_session s;
    ws_session_init(&s, 1024);
    ws_session_set_deflate(&s, &d);
    struct log l = {0};
    assert_int_equal(feed_chunk(&s, b.data, b.len, &l), WS_E_AGAIN);
    assert_int_equal(l.n, 2);
    assert_rec(&l.ev[0], WS_SESSION_MESSAGE, WS_OP_TEXT, "", 0);
    assert_rec(&l.ev[1], WS_SESSION_MESSAGE, WS_OP_TEXT, "", 0);
    log_free(&l);
    ws_session_reset(&s);
    ws_deflate_reset(&d);
    ws_buf_reset(&b);
}

/* A compressed text frame inflating to invalid UTF-8 and then failing: "\xffabc" then an invalid
 * block type, or "\xff" and 5000 zero bytes past a 1024-byte limit. Fed whole it failed with
 * WS_E_COMPRESSION (1007) or WS_E_MESSAGE_TOO_BIG (1009), byte by byte with WS_E_UTF8, because
 * the text inflated before the inflate error was not validated. Every split must give one answer:
 * the bytes before the error are invalid UTF-8 whichever way they arrive. */
static void test_fuzz_deflate_error_split_independent(void **state)
{
    (void)state;
    static const uint8_t bad_block[] = {0xfa, 0x9f, 0x98, 0x94, 0x0c, 0x00,
                                        0x00, 0x00, 0xff, 0xff, 0x07};
    static const uint8_t too_big[] = {0xec, 0xc1, 0x21, 0x01, 0x00, 0x00, 0x00, 0x02,
                                      0x20, 0xff, 0x9f, 0xd6, 0x15, 0x36, 0xa0, 0x01,
                                      0x00, 0x00, 0x00, 0x00, 0xee, 0x06};
    static const struct {
        const uint8_t *p;
        size_t n;
    } cases[] = {{bad_block, sizeof bad_block}, {too_big, sizeof too_big}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct ws_buf b;
        ws_buf_init(&b);
        add_compressed(&b, WS_OP_TEXT, cases[i].p, cases[i].n);
        for (size_t cut = 0; cut <= b.len; cut++) {
            struct ws_deflate d;
            deflate_start(&d);
            struct ws_session s;
            ws_session_init(&s, 1024);
            ws_session_set_deflate(&s, &d);
            struct log l = {0};
            int rc = feed_chunk(&s, b.data, cut, &l);
            if (rc == WS_E_AGAIN)
                rc = feed_chunk(&s, b.data + cut, b.len - cut, &l);
            assert_int_equal(rc, WS_E_UTF8);
            assert_int_equal(l.n, 0);
            log_free(&l);
            ws_session_reset(&s);
            ws_deflate_reset(&d);
        }
        ws_buf_reset(&b);
    }
}

/* A reload can lower the limit while a fragmented message is in progress: the next fragment is
 * refused (1009) instead of the room left wrapping around. */
static void test_limit_lowered_during_message(void **state)
{
    (void)state;
    struct ws_session s;
    ws_session_init(&s, 1000);
    struct ws_buf b;
    ws_buf_init(&b);
    uint8_t part[600];
    memset(part, 'a', sizeof(part));
    add_frame(&b, false, WS_OP_TEXT, part, sizeof(part));
    struct ws_session_event ev;
    size_t used;
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), WS_E_AGAIN);
    s.max_message_bytes = 100; /* as ws_conn_apply_config does after a reload */
    b.len = 0;
    add_frame(&b, true, WS_OP_CONTINUATION, part, 10);
    assert_int_equal(ws_session_feed(&s, b.data, b.len, &used, &ev), WS_E_MESSAGE_TOO_BIG);
    ws_buf_reset(&b);
    ws_session_reset(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_single_text_zero_copy),
        cmocka_unit_test(test_single_binary_zero_copy),
        cmocka_unit_test(test_zero_copy_header_in_earlier_call),
        cmocka_unit_test(test_payload_across_calls_is_copied),
        cmocka_unit_test(test_empty_messages),
        cmocka_unit_test(test_fragmented_two_and_three),
        cmocka_unit_test(test_fragmented_many),
        cmocka_unit_test(test_fragmented_zero_length_fragments),
        cmocka_unit_test(test_control_between_fragments),
        cmocka_unit_test(test_close_between_fragments),
        cmocka_unit_test(test_unexpected_continuation),
        cmocka_unit_test(test_new_data_frame_during_message),
        cmocka_unit_test(test_utf8_split_across_fragments),
        cmocka_unit_test(test_utf8_fail_fast_first_fragment),
        cmocka_unit_test(test_utf8_truncated_at_end),
        cmocka_unit_test(test_binary_not_validated),
        cmocka_unit_test(test_size_limit_single_frame),
        cmocka_unit_test(test_size_limit_fragmented),
        cmocka_unit_test(test_huge_length_header),
        cmocka_unit_test(test_message_buffer_release),
        cmocka_unit_test(test_control_split_across_feeds),
        cmocka_unit_test(test_ping_pong_zero_copy),
        cmocka_unit_test(test_frame_errors_propagate),
        cmocka_unit_test(test_close_valid_codes),
        cmocka_unit_test(test_close_invalid_codes),
        cmocka_unit_test(test_close_one_byte_payload),
        cmocka_unit_test(test_close_reason_invalid_utf8),
        cmocka_unit_test(test_close_empty_payload),
        cmocka_unit_test(test_close_state_transitions),
        cmocka_unit_test(test_bytes_after_close_ignored),
        cmocka_unit_test(test_every_split_same_events),
        cmocka_unit_test(test_every_split_same_error),
        cmocka_unit_test(test_errors_sticky),
        cmocka_unit_test(test_close_payload),
        cmocka_unit_test(test_close_code_valid_table),
        cmocka_unit_test(test_fuzz_deflate_empty_text),
        cmocka_unit_test(test_fuzz_deflate_error_split_independent),
        cmocka_unit_test(test_limit_lowered_during_message),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
