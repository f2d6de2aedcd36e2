/* Unit tests for the in-memory transport (src/core/mempipe.c) under the real connection code on
 * a simulated clock: the handshake and masked frames in, the server's frames out, bytes split
 * anywhere, a paused client whose queue grows until drain, the client's end of stream, the
 * server's close, and the idle timeout an hour later in no real time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testkit.h"

#include "ws/clock.h"
#include "ws/frame.h"
#include "ws/mempipe.h"

#include <string.h>
#include <sys/un.h>

struct memclient {
    struct ws_mempipe *pipe;
    struct testclient cl; /* its input buffer and frame reader only: fd stays -1 */
};

static struct testkit *start(void **state, const char *idle)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    if (idle)
        testkit_set(&cfg, "idle_timeout", idle);
    testkit_set(&cfg, "max_buffered", "65536");
    struct testkit *k = testkit_new(state, &cfg);
    ws_config_free(&cfg);
    ws_clock_simulate(k->loop, 1e9);
    return k;
}

static void settle(struct testkit *k)
{
    ws_clock_advance(k->loop, 0);
    testkit_pump(k);
}

/* Moves what the server wrote into the frame reader's buffer. */
static void collect(struct testkit *k, struct memclient *m)
{
    settle(k);
    size_t n;
    const uint8_t *p = ws_mempipe_output(m->pipe, &n);
    ws_buf_reserve(&m->cl.in, n + 1);
    memcpy(m->cl.in.data + m->cl.in.len, p, n);
    m->cl.in.len += n;
    m->cl.in.data[m->cl.in.len] = 0;
    ws_mempipe_take(m->pipe, n);
    m->cl.eof = ws_mempipe_ended(m->pipe);
}

static void connect_mem(struct testkit *k, struct memclient *m)
{
    memset(m, 0, sizeof(*m));
    ws_buf_init(&m->cl.in);
    ws_buf_reserve(&m->cl.in, 1);
    m->cl.fd = -1;
    int fd;
    m->pipe = ws_mempipe_new(&fd);
    assert_non_null(m->pipe);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    struct ws_conn *c =
        ws_conn_new(k->env, fd, (struct sockaddr *)&un, sizeof(un), &ws_transport_memory, m->pipe);
    ws_mempipe_attach(m->pipe, k->loop, &c->wire.io);
    m->cl.id = c->node.id;
    m->cl.conn = c;
}

static void send_buf(struct testkit *k, struct memclient *m, struct ws_buf *b, size_t step)
{
    for (size_t off = 0; off < b->len; off += step) {
        ws_mempipe_send(m->pipe, b->data + off, off + step < b->len ? step : b->len - off);
        settle(k);
    }
    ws_buf_reset(b);
}

static void open_mem(struct testkit *k, struct memclient *m, size_t step)
{
    connect_mem(k, m);
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_request(&b, "/chat", NULL);
    send_buf(k, m, &b, step);
    collect(k, m);
    const char *end = strstr((const char *)m->cl.in.data, "\r\n\r\n");
    assert_non_null(end);
    assert_memory_equal(m->cl.in.data, "HTTP/1.1 101", 12);
    ws_buf_consume(&m->cl.in, (size_t)(end + 4 - (const char *)m->cl.in.data));
    m->cl.in.data[m->cl.in.len] = 0;
}

static void close_mem(struct memclient *m)
{
    ws_mempipe_release(m->pipe);
    ws_buf_reset(&m->cl.in);
}

static void expect_text(struct testkit *k, struct memclient *m, const char *text)
{
    collect(k, m);
    struct testframe f;
    assert_true(testclient_take_frame(&m->cl, &f));
    assert_int_equal(f.opcode, WS_OP_TEXT);
    assert_false(f.masked);
    assert_int_equal(f.len, strlen(text));
    assert_memory_equal(f.data, text, f.len);
    testframe_free(&f);
}

static void test_handshake_and_echo_byte_by_byte(void **state)
{
    struct testkit *k = start(state, NULL);
    k->app.act.echo = true;
    struct memclient m;
    open_mem(k, &m, 1); /* the request head one byte at a time */
    assert_int_equal(testapp_count(&k->app, TA_OPEN, m.cl.id), 1);
    assert_string_equal(testapp_find(&k->app, TA_UPGRADE, m.cl.id)->data, "/chat");

    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_frame(&b, false, WS_OP_TEXT, "hel", 3);
    testclient_add_frame(&b, true, WS_OP_CONTINUATION, "lo", 2);
    testclient_add_frame(&b, true, WS_OP_TEXT, "two", 3);
    send_buf(k, &m, &b, 3);
    expect_text(k, &m, "hello");
    expect_text(k, &m, "two");
    assert_int_equal(k->env->stats->messages_in, 2);
    close_mem(&m);
}

static void test_paused_client_queues_then_drains(void **state)
{
    struct testkit *k = start(state, NULL);
    struct memclient m;
    open_mem(k, &m, 4096);
    ws_mempipe_pause(m.pipe, true);
    char msg[1000];
    memset(msg, 'x', sizeof(msg));
    int rc = WS_CONN_SENT;
    size_t sent = 0;
    while (rc == WS_CONN_SENT) {
        rc = ws_conn_send(m.cl.conn, WS_OP_TEXT, msg, sizeof(msg));
        sent++;
    }
    assert_int_equal(rc, WS_CONN_QUEUED);
    settle(k);
    assert_true(ws_conn_buffered(m.cl.conn) > 32768);
    assert_int_equal(testapp_count(&k->app, TA_DRAIN, m.cl.id), 0);
    ws_mempipe_pause(m.pipe, false); /* readable again: the write watcher is fed */
    collect(k, &m);
    assert_int_equal(ws_conn_buffered(m.cl.conn), 0);
    assert_int_equal(testapp_count(&k->app, TA_DRAIN, m.cl.id), 1);
    for (size_t i = 0; i < sent; i++) {
        struct testframe f;
        assert_true(testclient_take_frame(&m.cl, &f));
        assert_int_equal(f.len, sizeof(msg));
        testframe_free(&f);
    }
    close_mem(&m);
}

static void test_client_end_and_close_handshake(void **state)
{
    struct testkit *k = start(state, NULL);
    struct memclient a, b;
    open_mem(k, &a, 4096);
    open_mem(k, &b, 4096);
    /* a: a close frame, answered, then the server ends its side */
    struct ws_buf out;
    ws_buf_init(&out);
    testclient_add_close(&out, 1000, "bye");
    send_buf(k, &a, &out, 4096);
    collect(k, &a);
    struct testframe f;
    assert_true(testclient_take_frame(&a.cl, &f));
    assert_int_equal(f.opcode, WS_OP_CLOSE);
    assert_int_equal(f.code, 1000);
    testframe_free(&f);
    ws_mempipe_shutdown(a.pipe);
    collect(k, &a);
    assert_true(a.cl.eof);
    assert_int_equal(testapp_find(&k->app, TA_CLOSE, a.cl.id)->code, 1000);
    /* b: the client just goes away (end of stream): 1006 */
    ws_mempipe_shutdown(b.pipe);
    collect(k, &b);
    assert_true(b.cl.eof);
    assert_int_equal(testapp_find(&k->app, TA_CLOSE, b.cl.id)->code, 1006);
    close_mem(&a);
    close_mem(&b);
}

static void test_idle_hour_on_simulated_clock(void **state)
{
    struct testkit *k = start(state, "3600");
    struct memclient m;
    open_mem(k, &m, 4096);
    ws_clock_advance(k->loop, 3599);
    collect(k, &m);
    assert_int_equal(testkit_count_state(k, WS_CONN_OPEN), 1);
    ws_clock_advance(k->loop, 1.5);
    collect(k, &m);
    struct testframe f;
    assert_true(testclient_take_frame(&m.cl, &f));
    assert_int_equal(f.opcode, WS_OP_CLOSE);
    assert_int_equal(f.code, 1001);
    testframe_free(&f);
    ws_clock_advance(k->loop, 2); /* close_timeout: the server lets go */
    collect(k, &m);
    assert_true(m.cl.eof);
    assert_int_equal(testapp_find(&k->app, TA_CLOSE, m.cl.id)->code, 1001);
    close_mem(&m);
}

static int teardown(void **state)
{
    struct testkit *k = *state;
    if (k && k->loop) {
        testkit_pump(k);
        for (struct ws_registry_node *n = k->env->conns.head; n; n = n->next)
            ws_conn_abort((struct ws_conn *)n, 1006, NULL);
        ws_conn_run_pending(k->env);
        ws_clock_unsimulate(k->loop);
    }
    return testkit_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_handshake_and_echo_byte_by_byte, teardown),
        cmocka_unit_test_teardown(test_paused_client_queues_then_drains, teardown),
        cmocka_unit_test_teardown(test_client_end_and_close_handshake, teardown),
        cmocka_unit_test_teardown(test_idle_hour_on_simulated_clock, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
