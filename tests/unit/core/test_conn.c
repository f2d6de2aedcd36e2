/* Unit tests for one connection (src/core/conn.c with the front, wire and heartbeat under it),
 * driven by the C test app over socketpairs: the handshake and refusals, frames in and out, the
 * close handshake and protocol errors with their codes, back-pressure, closing from callbacks,
 * the timeouts, and the per-address limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testkit.h"
#include "ws/connlog.h"
#include "ws/err.h"
#include "ws/frame.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

/* A kit with the test defaults, freed by the teardown. */
static struct testkit *start(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    return k;
}

/* The next frame, checked to be opcode with payload text. */
static void expect_frame(struct testkit *k, struct testclient *cl, uint8_t opcode, const char *text)
{
    struct testframe f;
    testclient_frame(k, cl, &f);
    assert_int_equal(f.opcode, opcode);
    assert_true(f.fin);
    assert_false(f.masked); /* RFC 6455 §5.1: server frames are never masked */
    assert_int_equal(f.rsv, 0);
    assert_int_equal(f.len, strlen(text));
    assert_memory_equal(f.data, text, f.len);
    testframe_free(&f);
}

/* The next frame, checked to be a close frame with code. */
static void expect_close(struct testkit *k, struct testclient *cl, int code)
{
    struct testframe f;
    testclient_frame(k, cl, &f);
    assert_int_equal(f.opcode, WS_OP_CLOSE);
    assert_int_equal(f.code, code);
    testframe_free(&f);
}

/* Skips data frames up to the close frame and returns its code. */
static int skip_to_close(struct testkit *k, struct testclient *cl, size_t *ndata)
{
    for (int i = 0; i < 100000; i++) {
        struct testframe f;
        testclient_frame(k, cl, &f);
        int code = f.opcode == WS_OP_CLOSE ? f.code : 0;
        testframe_free(&f);
        if (code)
            return code;
        if (ndata)
            (*ndata)++;
    }
    fail_msg("no close frame");
    return 0;
}

/* Closes the client end and sweeps; the close event's code. */
static int hang_up(struct testkit *k, struct testclient *cl)
{
    uint64_t id = cl->id;
    testclient_close(cl);
    testkit_pump(k);
    assert_null(testkit_conn(k, id));
    const struct testapp_event *e = testapp_find(&k->app, TA_CLOSE, id);
    assert_non_null(e);
    return e->code;
}

/* The server has closed cl's connection by itself (the client has not hung up): it is gone after
 * the sweep. Returns its close event; the client side is closed. */
static const struct testapp_event *closed_by_server(struct testkit *k, struct testclient *cl)
{
    uint64_t id = cl->id;
    testkit_pump(k);
    assert_null(testkit_conn(k, id));
    const struct testapp_event *e = testapp_find(&k->app, TA_CLOSE, id);
    assert_non_null(e);
    testclient_close(cl);
    return e;
}

static void test_handshake_accepts_with_protocol(void **state)
{
    struct testkit *k = start(state);
    k->app.act.protocol = "superchat";
    struct testclient cl;
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    assert_int_equal(cl.conn->state, WS_CONN_CONNECTING);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_request(&b, "/chat?room=1", "chat, superchat");
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);

    char head[1024];
    assert_int_equal(testclient_head(k, &cl, head, sizeof(head)), 101);
    /* RFC 6455 §1.3: the sample key and its accept value */
    assert_non_null(strstr(head, "\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert_non_null(strstr(head, "\r\nSec-WebSocket-Protocol: superchat\r\n"));
    assert_non_null(strstr(head, "\r\nUpgrade: websocket\r\n"));
    assert_int_equal(cl.in.len, 0);

    const struct testapp_event *up = testapp_find(&k->app, TA_UPGRADE, cl.id);
    assert_non_null(up);
    assert_string_equal(up->data, "/chat?room=1");
    assert_string_equal(up->protocols, "chat, superchat");
    assert_int_equal(up->state, WS_CONN_CONNECTING);
    assert_true(testapp_index(&k->app, TA_UPGRADE, cl.id) < testapp_index(&k->app, TA_OPEN, cl.id));
    assert_int_equal(testapp_find(&k->app, TA_OPEN, cl.id)->state, WS_CONN_OPEN);
    assert_int_equal(cl.conn->state, WS_CONN_OPEN);
    assert_string_equal(cl.conn->protocol, "superchat");
    assert_string_equal(cl.conn->path, "/chat?room=1");
    assert_int_equal(k->env->nopen, 1);
    assert_int_equal(k->env->nupgraded, 1);
    assert_int_equal(hang_up(k, &cl), 1006);
    assert_int_equal(k->env->nopen, 0);
    assert_int_equal(k->env->nupgraded, 0);
}

static void test_protocol_from_config(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    testkit_set(&cfg, "protocols", "v2");
    testkit_set(&cfg, "protocols", "v1");
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    struct testclient cl;
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_request(&b, "/", "v1, v2");
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);
    char head[1024];
    assert_int_equal(testclient_head(k, &cl, head, sizeof(head)), 101);
    /* the server's preference order, not the client's */
    assert_non_null(strstr(head, "\r\nSec-WebSocket-Protocol: v2\r\n"));
    testclient_close(&cl);
}

static void test_first_frame_in_same_write_as_head(void **state)
{
    struct testkit *k = start(state);
    k->app.act.echo = true;
    struct testclient cl;
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_request(&b, "/", NULL);
    testclient_add_frame(&b, true, WS_OP_TEXT, "first", 5);
    testclient_add_frame(&b, true, WS_OP_BINARY, "\x00\x01", 2);
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);

    assert_int_equal(testclient_head(k, &cl, NULL, 0), 101);
    expect_frame(k, &cl, WS_OP_TEXT, "first");
    struct testframe f;
    testclient_frame(k, &cl, &f);
    assert_int_equal(f.opcode, WS_OP_BINARY);
    assert_int_equal(f.len, 2);
    assert_memory_equal(f.data, "\x00\x01", 2);
    testframe_free(&f);
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, cl.id), 2);
    assert_true(testapp_index(&k->app, TA_OPEN, cl.id) < testapp_index(&k->app, TA_MESSAGE, cl.id));
    testclient_close(&cl);

    /* the head split across two reads, the second also carrying a frame */
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    testclient_add_request(&b, "/", NULL);
    testclient_add_frame(&b, true, WS_OP_TEXT, "second", 6);
    testclient_write(k, &cl, b.data, 20);
    testkit_pump(k);
    assert_int_equal(cl.conn->state, WS_CONN_CONNECTING);
    testclient_write(k, &cl, b.data + 20, b.len - 20);
    ws_buf_reset(&b);
    assert_int_equal(testclient_head(k, &cl, NULL, 0), 101);
    expect_frame(k, &cl, WS_OP_TEXT, "second");
    testclient_close(&cl);
}

static void test_echo_text_and_binary(void **state)
{
    struct testkit *k = start(state);
    k->app.act.echo = true;
    struct testclient cl;
    testclient_open(k, &cl);

    testclient_send(k, &cl, WS_OP_TEXT, "h\xc3\xa9llo", 6);
    expect_frame(k, &cl, WS_OP_TEXT, "h\xc3\xa9llo");
    const uint8_t bin[] = {0, 0xff, 0x80, 0, 7};
    testclient_send(k, &cl, WS_OP_BINARY, bin, sizeof(bin));
    struct testframe f;
    testclient_frame(k, &cl, &f);
    assert_int_equal(f.opcode, WS_OP_BINARY);
    assert_int_equal(f.len, sizeof(bin));
    assert_memory_equal(f.data, bin, sizeof(bin));
    testframe_free(&f);
    testclient_send(k, &cl, WS_OP_TEXT, "", 0);
    expect_frame(k, &cl, WS_OP_TEXT, "");

    /* a message over 64 KiB: 64-bit length both ways */
    size_t big = 70000;
    uint8_t *p = malloc(big);
    for (size_t i = 0; i < big; i++)
        p[i] = (uint8_t)(i * 7);
    testclient_send(k, &cl, WS_OP_BINARY, p, big);
    testclient_frame(k, &cl, &f);
    assert_int_equal(f.len, big);
    assert_memory_equal(f.data, p, big);
    testframe_free(&f);
    free(p);

    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, cl.id), 4);
    const struct testapp_event *e = &k->app.ev[testapp_index(&k->app, TA_MESSAGE, cl.id)];
    assert_false(e[0].binary);
    assert_int_equal(e[0].len, 6);
    assert_true(e[1].binary);
    assert_int_equal(e[1].len, sizeof(bin));
    assert_memory_equal(e[1].data, bin, sizeof(bin));
    assert_int_equal(k->env->stats->messages_in, 4);
    assert_int_equal(k->env->stats->messages_out, 4);
    testclient_close(&cl);
}

static void test_fragmented_message_with_ping_between(void **state)
{
    struct testkit *k = start(state);
    k->app.act.echo = true;
    struct testclient cl;
    testclient_open(k, &cl);

    /* RFC 6455 §5.4: fragments in separate reads, a control frame between them */
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_frame(&b, false, WS_OP_TEXT, "Hel", 3);
    testclient_write(k, &cl, b.data, b.len);
    testkit_pump(k);
    b.len = 0;
    testclient_add_frame(&b, true, WS_OP_PING, "p", 1);
    testclient_add_frame(&b, false, WS_OP_CONTINUATION, "lo, ", 4);
    testclient_write(k, &cl, b.data, b.len);
    testkit_pump(k);
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, cl.id), 0);
    b.len = 0;
    testclient_add_frame(&b, true, WS_OP_CONTINUATION, "world", 5);
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);

    expect_frame(k, &cl, WS_OP_PONG, "p");
    expect_frame(k, &cl, WS_OP_TEXT, "Hello, world");
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, cl.id), 1);
    assert_string_equal(testapp_find(&k->app, TA_MESSAGE, cl.id)->data, "Hello, world");
    testclient_close(&cl);
}

static void test_next_message_takes_the_rest_of_a_read(void **state)
{
    struct testkit *k = start(state);
    k->app.act.echo = true;
    k->app.act.pull = true;
    struct testclient cl;
    testclient_open(k, &cl);

    /* one write: the app takes what follows a message up to a frame of another kind */
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_frame(&b, true, WS_OP_TEXT, "a", 1);
    testclient_add_frame(&b, true, WS_OP_TEXT, "b", 1);
    testclient_add_frame(&b, true, WS_OP_PING, "p", 1);
    testclient_add_frame(&b, true, WS_OP_BINARY, "c", 1);
    testclient_add_frame(&b, false, WS_OP_TEXT, "d", 1); /* assembled: from the session's buffer */
    testclient_add_frame(&b, true, WS_OP_CONTINUATION, "e", 1);
    testclient_add_frame(&b, true, WS_OP_TEXT, "f", 1);
    testclient_write(k, &cl, b.data, b.len);
    b.len = 0;
    expect_frame(k, &cl, WS_OP_TEXT, "a");
    expect_frame(k, &cl, WS_OP_TEXT, "b");
    expect_frame(k, &cl, WS_OP_PONG, "p");
    expect_frame(k, &cl, WS_OP_BINARY, "c");
    expect_frame(k, &cl, WS_OP_TEXT, "de");
    expect_frame(k, &cl, WS_OP_TEXT, "f");
    static const struct {
        const char *data;
        bool pulled, more;
    } want[] = {{"a", false, true},
                {"b", true, true},
                {"c", false, true},
                {"de", true, true},
                {"f", true, false}};
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, cl.id), 5);
    const struct testapp_event *e = &k->app.ev[testapp_index(&k->app, TA_MESSAGE, cl.id)];
    for (size_t i = 0; i < 5; i++) {
        assert_string_equal(e[i].data, want[i].data);
        assert_int_equal(e[i].pulled, want[i].pulled);
        assert_int_equal(e[i].more, want[i].more);
    }
    assert_true(e[2].binary);
    assert_int_equal(k->env->stats->messages_in, 5);

    /* a message alone in its read, then the close after one: nothing more to take */
    testclient_add_frame(&b, true, WS_OP_TEXT, "g", 1);
    testclient_add_close(&b, 1000, "");
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);
    expect_frame(k, &cl, WS_OP_TEXT, "g");
    expect_close(k, &cl, 1000);
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, cl.id), 6);
    e = &k->app.ev[testapp_index(&k->app, TA_MESSAGE, cl.id)];
    assert_false(e[5].pulled);
    assert_true(e[5].more); /* the close frame follows in the read */
    assert_int_equal(k->env->stats->messages_in, 6);
    testclient_close(&cl);
}

static void test_ping_answered_with_same_payload(void **state)
{
    struct testkit *k = start(state);
    struct testclient cl;
    testclient_open(k, &cl);
    testclient_send(k, &cl, WS_OP_PING, "abc\x00\xff", 5);
    struct testframe f;
    testclient_frame(k, &cl, &f);
    assert_int_equal(f.opcode, WS_OP_PONG);
    assert_int_equal(f.len, 5);
    assert_memory_equal(f.data, "abc\x00\xff", 5);
    testframe_free(&f);
    testclient_send(k, &cl, WS_OP_PING, "", 0);
    expect_frame(k, &cl, WS_OP_PONG, "");
    /* an unsolicited pong is not answered */
    testclient_send(k, &cl, WS_OP_PONG, "x", 1);
    assert_false(testclient_has_input(k, &cl));
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, 0), 0);
    testclient_close(&cl);
}

static void test_client_close_echoed_then_tcp_closed(void **state)
{
    struct testkit *k = start(state);
    struct testclient cl;
    testclient_open(k, &cl);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_close(&b, 4001, "done");
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);

    /* RFC 6455 §5.5.1: the code echoed; then the server closes the TCP connection first
     * (§7.1.1), at once: with both close frames through it waits for nothing from the peer */
    expect_close(k, &cl, 4001);
    assert_true(testclient_wait_eof(k, &cl));
    assert_int_equal(cl.in.len, 0);
    uint64_t id = cl.id;
    const struct testapp_event *e = closed_by_server(k, &cl);
    assert_int_equal(e->code, 4001);
    assert_string_equal(e->data, "done");
    assert_int_equal(k->env->stats->closes_by_code[4001], 1);
    assert_true(testapp_index(&k->app, TA_CLOSE, id) < testapp_index(&k->app, TA_RELEASE, id));
}

static void test_empty_close_reported_as_1005(void **state)
{
    struct testkit *k = start(state);
    struct testclient cl;
    testclient_open(k, &cl);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_close(&b, 0, NULL);
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);
    struct testframe f;
    testclient_frame(k, &cl, &f);
    assert_int_equal(f.opcode, WS_OP_CLOSE);
    assert_int_equal(f.len, 0); /* echoed without a code, as received */
    testframe_free(&f);
    assert_int_equal(hang_up(k, &cl), 1005);
}

/* Writes raw bytes after the handshake and expects a close frame with code, then a close event
 * with it when the client hangs up; no message reaches the app. */
static void expect_protocol_close(void **state, const void *raw, size_t n, int code,
                                  int64_t max_message)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    cfg.max_message_size = max_message;
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    struct testclient cl;
    testclient_open(k, &cl);
    testclient_write(k, &cl, raw, n);
    expect_close(k, &cl, code);
    assert_true(testclient_wait_eof(k, &cl));
    /* the peer's close reply is discarded: the connection waits for the end of the stream */
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_close(&b, 1000, "");
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);
    testkit_pump(k);
    assert_int_equal(cl.conn->state, WS_CONN_CLOSING);
    assert_int_equal(hang_up(k, &cl), code);
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, 0), 0);
    assert_int_equal(k->env->stats->closes_by_code[code], 1);
    testkit_teardown(state);
}

static void test_unmasked_frame_is_1002(void **state)
{
    const uint8_t unmasked[] = {0x81, 0x02, 'h', 'i'};
    expect_protocol_close(state, unmasked, sizeof(unmasked), 1002, 1 << 20);
}

static void test_oversized_message_is_1009(void **state)
{
    struct ws_buf b;
    ws_buf_init(&b);
    uint8_t payload[101] = {0};
    testclient_add_frame(&b, true, WS_OP_BINARY, payload, sizeof(payload));
    expect_protocol_close(state, b.data, b.len, 1009, 100);
    /* the limit is on the message, not the frame */
    b.len = 0;
    testclient_add_frame(&b, false, WS_OP_BINARY, payload, 60);
    testclient_add_frame(&b, true, WS_OP_CONTINUATION, payload, 41);
    expect_protocol_close(state, b.data, b.len, 1009, 100);
    ws_buf_reset(&b);
}

static void test_invalid_utf8_is_1007(void **state)
{
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_frame(&b, true, WS_OP_TEXT, "ok\xc3\x28", 4);
    expect_protocol_close(state, b.data, b.len, 1007, 1 << 20);
    ws_buf_reset(&b);
}

static void test_refused_upgrade(void **state)
{
    struct testkit *k = start(state);
    k->app.act.refuse_status = 403;
    k->app.act.refuse_body = "members only";
    struct testclient cl;
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_request(&b, "/private", NULL);
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);

    char head[1024];
    assert_int_equal(testclient_head(k, &cl, head, sizeof(head)), 403);
    assert_null(strstr(head, "Sec-WebSocket-Accept"));
    assert_true(testclient_wait_eof(k, &cl));
    assert_string_equal((char *)cl.in.data, "members only\n");
    assert_int_equal(testapp_count(&k->app, TA_UPGRADE, cl.id), 1);
    assert_int_equal(testapp_count(&k->app, TA_OPEN, 0), 0);
    assert_int_equal(k->env->stats->rejections_by_status[403], 1);
    assert_int_equal(k->env->stats->handshake_rejections, 1);
    assert_int_equal(k->env->nopen, 0);
    uint64_t id = cl.id;
    testclient_close(&cl);
    testkit_pump(k);
    assert_null(testkit_conn(k, id));
    /* never opened: no close event, but the app lets go of it */
    assert_int_equal(testapp_count(&k->app, TA_CLOSE, 0), 0);
    assert_int_equal(testapp_count(&k->app, TA_RELEASE, id), 1);
}

static void test_http_route_and_fallback(void **state)
{
    struct testkit *k = start(state);
    k->app.act.http_path = "/hello";
    k->app.act.http_status = 201;
    k->app.act.http_body = "made";
    struct testclient cl;
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    const char *req = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
    testclient_write(k, &cl, req, strlen(req));
    char head[1024];
    assert_int_equal(testclient_head(k, &cl, head, sizeof(head)), 201);
    assert_non_null(strstr(head, "\r\nContent-Length: 4\r\n"));
    assert_true(testclient_wait_eof(k, &cl));
    assert_string_equal((char *)cl.in.data, "made");
    testclient_close(&cl);

    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    req = "GET /other HTTP/1.1\r\nHost: x\r\n\r\n";
    testclient_write(k, &cl, req, strlen(req));
    assert_int_equal(testclient_head(k, &cl, head, sizeof(head)), 426);
    assert_int_equal(testapp_count(&k->app, TA_HTTP, 0), 2);
    assert_string_equal(testapp_find(&k->app, TA_HTTP, cl.id)->data, "/other");
    assert_int_equal(testapp_count(&k->app, TA_UPGRADE, 0), 0);
    assert_int_equal(k->env->stats->handshake_rejections, 0);
    testclient_close(&cl);
}

/* An upgrade and a route the app answers later: nothing goes out until it does; frames sent
 * meanwhile run after the 101 and open. */
static void test_deferred_upgrade_and_http(void **state)
{
    struct testkit *k = start(state);
    k->app.act.defer = true;
    k->app.act.echo = true;
    k->app.act.http_path = "/later";
    struct testclient cl;
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_request(&b, "/", "chat");
    testclient_add_frame(&b, true, WS_OP_TEXT, "early", 5);
    testclient_write(k, &cl, b.data, b.len);
    testclient_send(k, &cl, WS_OP_TEXT, "later", 5);
    ws_buf_reset(&b);
    assert_false(testclient_has_input(k, &cl));
    assert_int_equal(cl.conn->state, WS_CONN_CONNECTING);
    assert_int_equal(testapp_count(&k->app, TA_OPEN, 0), 0);
    struct ws_upgrade_reply up = {.protocol = ws_xstrndup("chat", 4)};
    ws_conn_upgrade_decided(cl.conn, &up);
    char head[1024];
    assert_int_equal(testclient_head(k, &cl, head, sizeof(head)), 101);
    assert_non_null(strstr(head, "\r\nSec-WebSocket-Protocol: chat\r\n"));
    expect_frame(k, &cl, WS_OP_TEXT, "early");
    expect_frame(k, &cl, WS_OP_TEXT, "later");
    assert_true(testapp_index(&k->app, TA_OPEN, cl.id) < testapp_index(&k->app, TA_MESSAGE, cl.id));
    testclient_close(&cl);

    /* a refusal decided later */
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    testclient_add_request(&b, "/", NULL);
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);
    assert_false(testclient_has_input(k, &cl));
    struct ws_upgrade_reply no = {.status = 401, .body = ws_xstrndup("who?", 4), .body_len = 4};
    ws_conn_upgrade_decided(cl.conn, &no);
    assert_int_equal(testclient_head(k, &cl, NULL, 0), 401);
    assert_true(testclient_wait_eof(k, &cl));
    assert_string_equal((char *)cl.in.data, "who?\n");
    testclient_close(&cl);

    /* a route answered later sees its body; bytes after the request are not read for it */
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    const char *req = "POST /later HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcGARBAGE";
    testclient_write(k, &cl, req, strlen(req));
    assert_false(testclient_has_input(k, &cl));
    struct ws_http_reply ok = {.status = 202, .body = ws_xstrndup("done", 4), .body_len = 4};
    ws_conn_http_answered(cl.conn, &ok);
    assert_int_equal(testclient_head(k, &cl, head, sizeof(head)), 202);
    assert_true(testclient_wait_eof(k, &cl));
    assert_string_equal((char *)cl.in.data, "done");
    testclient_close(&cl);
}

static void test_send_on_open_follows_the_101(void **state)
{
    struct testkit *k = start(state);
    k->app.act.send_on_open = 3;
    k->app.act.close_on_open = 4003;
    struct testclient cl;
    testclient_open(k, &cl);
    expect_frame(k, &cl, WS_OP_TEXT, "m0");
    expect_frame(k, &cl, WS_OP_TEXT, "m1");
    expect_frame(k, &cl, WS_OP_TEXT, "m2");
    struct testframe f;
    testclient_frame(k, &cl, &f);
    assert_int_equal(f.code, 4003);
    assert_int_equal(f.len, 5);
    assert_memory_equal(f.data + 2, "bye", 3);
    testframe_free(&f);
    assert_int_equal(k->app.last_send, WS_CONN_SENT);
    assert_int_equal(hang_up(k, &cl), 4003);
}

/* Fills the queue with 1000-byte messages until a send is refused (or, unless past_mark, merely
 * queued above the low-water mark); returns that result and the number accepted before it. */
static int fill(struct ws_conn *c, size_t *accepted, bool past_mark)
{
    static const uint8_t msg[1000];
    *accepted = 0;
    for (int i = 0; i < 10000; i++) {
        size_t before = ws_conn_buffered(c);
        int rc = ws_conn_send(c, WS_OP_BINARY, msg, sizeof(msg));
        if (rc < 0 || (rc == WS_CONN_QUEUED && !past_mark))
            return rc;
        assert_true(ws_conn_buffered(c) > before);
        (*accepted)++;
    }
    fail_msg("the queue never filled");
    return 0;
}

static struct testkit *start_buffered(void **state, const char *max, const char *mode)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    testkit_set(&cfg, "max_buffered", max);
    testkit_set(&cfg, "backpressure", mode);
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    return k;
}

static void test_backpressure_queued_then_drain(void **state)
{
    struct testkit *k = start_buffered(state, "65536", "close");
    struct testclient cl;
    testclient_open(k, &cl);
    testclient_shrink(&cl);
    size_t sent;
    /* low-water mark: half of max_buffered, at most 64 KiB */
    assert_int_equal(fill(cl.conn, &sent, false), WS_CONN_QUEUED);
    assert_true(ws_conn_buffered(cl.conn) > 32768);
    assert_true(ws_conn_buffered(cl.conn) - 1004 <= 32768);
    assert_int_equal(ws_conn_send(cl.conn, WS_OP_TEXT, "more", 4), WS_CONN_QUEUED);
    sent += 2;

    /* the socket takes only part of it while the client does not read */
    testkit_pump(k);
    assert_true(ws_conn_buffered(cl.conn) > 0);
    assert_int_equal(testapp_count(&k->app, TA_DRAIN, 0), 0);

    size_t frames = 0;
    for (int i = 0; i < 1000 && frames < sent; i++) {
        struct testframe f;
        testclient_frame(k, &cl, &f);
        testframe_free(&f);
        frames++;
    }
    assert_int_equal(frames, sent);
    testkit_pump(k);
    assert_int_equal(ws_conn_buffered(cl.conn), 0);
    assert_int_equal(testapp_count(&k->app, TA_DRAIN, cl.id), 1);
    assert_int_equal(testapp_find(&k->app, TA_DRAIN, cl.id)->state, WS_CONN_OPEN);
    /* below the mark again: no drain owed */
    assert_int_equal(ws_conn_send(cl.conn, WS_OP_TEXT, "x", 1), WS_CONN_SENT);
    expect_frame(k, &cl, WS_OP_TEXT, "x");
    assert_int_equal(testapp_count(&k->app, TA_DRAIN, cl.id), 1);
    testclient_close(&cl);
}

static void test_backpressure_close_is_1008(void **state)
{
    struct testkit *k = start_buffered(state, "4096", "close");
    struct testclient cl;
    testclient_open(k, &cl);
    size_t sent;
    assert_int_equal(fill(cl.conn, &sent, true), WS_E_CLOSED);
    assert_true(sent >= 1);
    assert_int_equal(cl.conn->state, WS_CONN_CLOSING);
    assert_int_equal(ws_conn_send(cl.conn, WS_OP_TEXT, "x", 1), WS_E_CLOSED);
    size_t ndata = 0;
    assert_int_equal(skip_to_close(k, &cl, &ndata), 1008);
    assert_int_equal(ndata, sent);
    assert_int_equal(hang_up(k, &cl), 1008);
    assert_int_equal(k->env->stats->dropped, 0);
}

static void test_backpressure_drop_keeps_open(void **state)
{
    struct testkit *k = start_buffered(state, "4096", "drop");
    struct testclient cl;
    testclient_open(k, &cl);
    size_t sent;
    assert_int_equal(fill(cl.conn, &sent, true), WS_E_LIMIT);
    assert_int_equal(fill(cl.conn, &sent, true), WS_E_LIMIT);
    assert_int_equal(sent, 0);
    assert_int_equal(k->env->stats->dropped, 2);
    assert_int_equal(cl.conn->state, WS_CONN_OPEN);
    /* control frames are not data: they still go */
    assert_true(ws_conn_ping(cl.conn, "p", 1) >= 0);
    testkit_pump(k);
    assert_int_equal(ws_conn_buffered(cl.conn), 0);
    assert_int_equal(ws_conn_send(cl.conn, WS_OP_TEXT, "after", 5), WS_CONN_SENT);
    size_t frames = 0;
    struct testframe f;
    for (;;) {
        testclient_frame(k, &cl, &f);
        bool text = f.opcode == WS_OP_TEXT;
        testframe_free(&f);
        if (text)
            break;
        frames++;
    }
    assert_int_equal(frames, 4 + 1); /* what fit in 4096, then the ping */
    assert_int_equal(hang_up(k, &cl), 1006);
}

static void test_close_in_callback_only_marks(void **state)
{
    struct testkit *k = start(state);
    k->app.act.close_on_message = 4002;
    k->app.act.abort_on_message = true;
    struct testclient cl;
    testclient_open(k, &cl);
    testclient_send(k, &cl, WS_OP_TEXT, "bye", 3);
    /* loop iterations without the per-iteration pass */
    for (int i = 0; i < 100 && !testapp_count(&k->app, TA_MESSAGE, cl.id); i++)
        ev_run(k->loop, EVRUN_NOWAIT);
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, cl.id), 1);
    assert_ptr_equal(testkit_conn(k, cl.id), cl.conn);
    assert_int_equal(cl.conn->state, WS_CONN_CLOSED);
    assert_int_equal(testapp_count(&k->app, TA_CLOSE, 0), 0);
    assert_int_equal(testapp_count(&k->app, TA_RELEASE, 0), 0);
    assert_int_equal(ws_conn_send(cl.conn, WS_OP_TEXT, "x", 1), WS_E_CLOSED);

    ws_conn_run_pending(k->env);
    assert_null(testkit_conn(k, cl.id));
    const struct testapp_event *e = testapp_find(&k->app, TA_CLOSE, cl.id);
    assert_non_null(e);
    assert_int_equal(e->code, 4002);
    assert_string_equal(e->data, "aborted by the app");
    assert_int_equal(e->state, WS_CONN_CLOSED);
    assert_true(testapp_index(&k->app, TA_CLOSE, cl.id) <
                testapp_index(&k->app, TA_RELEASE, cl.id));
    /* dropped without a close frame */
    assert_true(testclient_wait_eof(k, &cl));
    assert_int_equal(cl.in.len, 0);
    testclient_close(&cl);
}

static void test_graceful_close_in_callback(void **state)
{
    struct testkit *k = start(state);
    k->app.act.close_on_message = 4000;
    k->app.act.echo = true;
    struct testclient cl;
    testclient_open(k, &cl);
    testclient_send(k, &cl, WS_OP_TEXT, "last", 4);
    for (int i = 0; i < 100 && !testapp_count(&k->app, TA_MESSAGE, cl.id); i++)
        ev_run(k->loop, EVRUN_NOWAIT);
    assert_int_equal(cl.conn->state, WS_CONN_CLOSING);
    /* the echo queued before the close goes out first; nothing after the close frame */
    expect_frame(k, &cl, WS_OP_TEXT, "last");
    struct testframe f;
    testclient_frame(k, &cl, &f);
    assert_int_equal(f.code, 4000);
    assert_string_equal((char *)f.data + 2, "closed by the app");
    testframe_free(&f);
    /* a message after our close frame is discarded (RFC 6455 §1.4) */
    testclient_send(k, &cl, WS_OP_TEXT, "late", 4);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_close(&b, 4000, "");
    testclient_write(k, &cl, b.data, b.len);
    ws_buf_reset(&b);
    assert_true(testclient_wait_eof(k, &cl));
    assert_int_equal(cl.in.len, 0);
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, cl.id), 1);
    /* the peer's reply completes the handshake: the socket closes without waiting for its FIN */
    assert_int_equal(closed_by_server(k, &cl)->code, 4000);
}

static void test_topics_attached_during_close(void **state)
{
    struct testkit *k = start(state);
    k->app.act.subscribe = "room";
    struct testclient a, b;
    testclient_open(k, &a);
    testclient_open(k, &b);
    struct ws_topic *t = ws_topics_find(&k->env->topics, "room", 4);
    assert_non_null(t);
    assert_int_equal(t->nsubs, 2);
    uint64_t id = a.id;
    assert_int_equal(hang_up(k, &a), 1006);
    assert_int_equal(testapp_find(&k->app, TA_CLOSE, id)->ntopics, 1);
    assert_int_equal(testapp_find(&k->app, TA_RELEASE, id)->ntopics, 0);
    t = ws_topics_find(&k->env->topics, "room", 4);
    assert_non_null(t);
    assert_int_equal(t->nsubs, 1);
    hang_up(k, &b);
    assert_null(ws_topics_find(&k->env->topics, "room", 4));
}

static void test_handshake_timeout_drops(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    cfg.handshake_timeout = 0.05;
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    struct testclient cl;
    testclient_pair(k, &cl, SOCK_STREAM, NULL, 0);
    const char *part = "GET / HTTP/1.1\r\nHost: x\r\n";
    testclient_write(k, &cl, part, strlen(part));
    testkit_run_for(k, 0.01);
    assert_int_equal(cl.conn->state, WS_CONN_CONNECTING);
    uint64_t id = cl.id;
    testkit_run_for(k, 0.1);
    assert_null(testkit_conn(k, id));
    assert_true(testclient_wait_eof(k, &cl));
    assert_int_equal(cl.in.len, 0); /* dropped without an answer */
    assert_int_equal(testapp_count(&k->app, TA_OPEN, 0), 0);
    assert_int_equal(testapp_count(&k->app, TA_CLOSE, 0), 0);
    assert_int_equal(testapp_find(&k->app, TA_RELEASE, id)->code, 1006);
    testclient_close(&cl);
}

static void test_ping_then_pong_timeout(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    cfg.ping_interval = 0.1;
    cfg.pong_timeout = 0.15;
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    struct testclient cl;
    testclient_open(k, &cl);
    testkit_run_for(k, 0.05);
    assert_false(testclient_has_input(k, &cl));
    testkit_run_for(k, 0.1);
    expect_frame(k, &cl, WS_OP_PING, "");
    /* any bytes prove the peer alive, not only a pong: the next ping comes an interval after
     * them, and no pong timeout runs meanwhile */
    testclient_send(k, &cl, WS_OP_TEXT, "alive", 5);
    testkit_run_for(k, 0.15);
    expect_frame(k, &cl, WS_OP_PING, "");
    assert_int_equal(cl.conn->state, WS_CONN_OPEN);
    /* no answer this time */
    testkit_run_for(k, 0.15);
    struct testframe f;
    testclient_frame(k, &cl, &f);
    assert_int_equal(f.opcode, WS_OP_CLOSE);
    assert_int_equal(f.code, 1001);
    assert_string_equal((char *)f.data + 2, "pong timeout");
    testframe_free(&f);
    assert_int_equal(hang_up(k, &cl), 1001);
}

static void test_idle_timeout(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    cfg.idle_timeout = 0.2;
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    struct testclient cl;
    testclient_open(k, &cl);
    testkit_run_for(k, 0.1);
    testclient_send(k, &cl, WS_OP_TEXT, "still here", 10);
    testkit_run_for(k, 0.1);
    /* a ping is no activity: the deadline stays 0.2 s after the last data message */
    testclient_send(k, &cl, WS_OP_PING, "", 0);
    testkit_run_for(k, 0.05);
    expect_frame(k, &cl, WS_OP_PONG, "");
    assert_int_equal(cl.conn->state, WS_CONN_OPEN);
    testkit_run_for(k, 0.1);
    struct testframe f;
    testclient_frame(k, &cl, &f);
    assert_int_equal(f.code, 1001);
    assert_string_equal((char *)f.data + 2, "idle timeout");
    testframe_free(&f);
    assert_int_equal(hang_up(k, &cl), 1001);
}

static void test_close_timeout_drops_silent_peer(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    cfg.close_timeout = 0.05;
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    struct testclient cl;
    testclient_open(k, &cl);
    assert_int_equal(ws_conn_close(cl.conn, 1000, "done", 4), 0);
    assert_int_equal(ws_conn_close(cl.conn, 1000, "again", 5), WS_E_CLOSED);
    expect_close(k, &cl, 1000);
    uint64_t id = cl.id;
    testkit_run_for(k, 0.1);
    assert_null(testkit_conn(k, id));
    const struct testapp_event *e = testapp_find(&k->app, TA_CLOSE, id);
    assert_non_null(e);
    assert_int_equal(e->code, 1000);
    testclient_close(&cl);
}

static struct sockaddr_in inet_peer(const char *ip, uint16_t port)
{
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(port)};
    assert_int_equal(inet_pton(AF_INET, ip, &in.sin_addr), 1);
    return in;
}

static void test_per_address_limit(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    cfg.max_connections_per_ip = 2;
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    struct testclient c[8];
    struct sockaddr_in a1 = inet_peer("10.1.2.3", 1000), a2 = inet_peer("10.1.2.3", 1001);
    struct sockaddr_in a3 = inet_peer("10.1.2.3", 1002), other = inet_peer("10.9.9.9", 1000);
    testclient_pair(k, &c[0], SOCK_STREAM, (struct sockaddr *)&a1, sizeof(a1));
    testclient_pair(k, &c[1], SOCK_STREAM, (struct sockaddr *)&a2, sizeof(a2));
    char peer[64];
    assert_string_equal(ws_connlog_peer(c[0].conn, peer, sizeof(peer)), "10.1.2.3:1000");
    assert_int_equal(c[0].conn->state, WS_CONN_CONNECTING);
    assert_int_equal(c[1].conn->state, WS_CONN_CONNECTING);
    /* the third from the same address is refused at once, with its answer */
    testclient_pair(k, &c[2], SOCK_STREAM, (struct sockaddr *)&a3, sizeof(a3));
    assert_int_equal(c[2].conn->state, WS_CONN_CLOSED);
    char head[512];
    assert_int_equal(testclient_head(k, &c[2], head, sizeof(head)), 503);
    assert_true(testclient_wait_eof(k, &c[2]));
    assert_int_equal(k->env->stats->rejections_by_status[503], 1);
    /* another address, and unix peers (no address), are not limited */
    testclient_pair(k, &c[3], SOCK_STREAM, (struct sockaddr *)&other, sizeof(other));
    assert_int_equal(c[3].conn->state, WS_CONN_CONNECTING);
    for (int i = 4; i < 8; i++) {
        testclient_pair(k, &c[i], SOCK_STREAM, NULL, 0);
        assert_int_equal(c[i].conn->state, WS_CONN_CONNECTING);
    }
    /* a slot comes back when its connection is freed */
    testclient_close(&c[0]);
    testkit_pump(k);
    testclient_close(&c[2]);
    testclient_pair(k, &c[2], SOCK_STREAM, (struct sockaddr *)&a3, sizeof(a3));
    assert_int_equal(c[2].conn->state, WS_CONN_CONNECTING);
    for (int i = 1; i < 8; i++)
        testclient_close(&c[i]);
    testkit_pump(k);
    assert_int_equal(k->env->conns.count, 0);
    assert_int_equal(k->env->per_ip.count, 0);
}

static void test_refused_handshake_frees_address_slot(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    cfg.max_connections_per_ip = 1;
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    k->app.act.refuse_status = 401;
    struct sockaddr_in a = inet_peer("192.0.2.1", 1);
    struct testclient c1, c2;
    testclient_pair(k, &c1, SOCK_STREAM, (struct sockaddr *)&a, sizeof(a));
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_request(&b, "/", NULL);
    testclient_write(k, &c1, b.data, b.len);
    ws_buf_reset(&b);
    assert_int_equal(testclient_head(k, &c1, NULL, 0), 401);
    /* c1 lingers for its answer but no longer holds the address's one slot */
    assert_non_null(testkit_conn(k, c1.id));
    testclient_pair(k, &c2, SOCK_STREAM, (struct sockaddr *)&a, sizeof(a));
    assert_int_equal(c2.conn->state, WS_CONN_CONNECTING);
    testclient_close(&c1);
    testclient_close(&c2);
    testkit_pump(k);
    assert_int_equal(k->env->per_ip.count, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_handshake_accepts_with_protocol, testkit_teardown),
        cmocka_unit_test_teardown(test_protocol_from_config, testkit_teardown),
        cmocka_unit_test_teardown(test_first_frame_in_same_write_as_head, testkit_teardown),
        cmocka_unit_test_teardown(test_echo_text_and_binary, testkit_teardown),
        cmocka_unit_test_teardown(test_fragmented_message_with_ping_between, testkit_teardown),
        cmocka_unit_test_teardown(test_next_message_takes_the_rest_of_a_read, testkit_teardown),
        cmocka_unit_test_teardown(test_ping_answered_with_same_payload, testkit_teardown),
        cmocka_unit_test_teardown(test_client_close_echoed_then_tcp_closed, testkit_teardown),
        cmocka_unit_test_teardown(test_empty_close_reported_as_1005, testkit_teardown),
        cmocka_unit_test_teardown(test_unmasked_frame_is_1002, testkit_teardown),
        cmocka_unit_test_teardown(test_oversized_message_is_1009, testkit_teardown),
        cmocka_unit_test_teardown(test_invalid_utf8_is_1007, testkit_teardown),
        cmocka_unit_test_teardown(test_refused_upgrade, testkit_teardown),
        cmocka_unit_test_teardown(test_http_route_and_fallback, testkit_teardown),
        cmocka_unit_test_teardown(test_deferred_upgrade_and_http, testkit_teardown),
        cmocka_unit_test_teardown(test_send_on_open_follows_the_101, testkit_teardown),
        cmocka_unit_test_teardown(test_backpressure_queued_then_drain, testkit_teardown),
        cmocka_unit_test_teardown(test_backpressure_close_is_1008, testkit_teardown),
        cmocka_unit_test_teardown(test_backpressure_drop_keeps_open, testkit_teardown),
        cmocka_unit_test_teardown(test_close_in_callback_only_marks, testkit_teardown),
        cmocka_unit_test_teardown(test_graceful_close_in_callback, testkit_teardown),
        cmocka_unit_test_teardown(test_topics_attached_during_close, testkit_teardown),
        cmocka_unit_test_teardown(test_handshake_timeout_drops, testkit_teardown),
        cmocka_unit_test_teardown(test_ping_then_pong_timeout, testkit_teardown),
        cmocka_unit_test_teardown(test_idle_timeout, testkit_teardown),
        cmocka_unit_test_teardown(test_close_timeout_drops_silent_peer, testkit_teardown),
        cmocka_unit_test_teardown(test_per_address_limit, testkit_teardown),
        cmocka_unit_test_teardown(test_refused_handshake_frees_address_slot, testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
