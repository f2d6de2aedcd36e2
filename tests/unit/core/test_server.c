/* Unit tests for the server (src/core/server.c) on a unix listener in a temporary folder, driven
 * by the C test app: accept, the prepare pass (one write per connection per wake-up, freeing only
 * after the iteration), broadcast and publish, lookups of closed ids, and graceful shutdown in
 * batches of 500 with its timeout. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testkit.h"
#include "ws/connlog.h"
#include "ws/err.h"
#include "ws/frame.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

/* A server with the test defaults, freed by the teardown. */
static struct testkit *start(void **state, char *path, size_t cap)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    struct testkit *k = testkit_new_server(state, &cfg, path, cap);
    ws_config_free(&cfg);
    return k;
}

/* Writes the handshake for "/" without waiting for the answer. */
static void request(struct testkit *k, struct testclient *cl)
{
    struct ws_buf b;
    ws_buf_init(&b);
    testclient_add_request(&b, "/", NULL);
    testclient_write(k, cl, b.data, b.len);
    ws_buf_reset(&b);
}

/* A client of the server's env over a socketpair (type), through the handshake. */
static void open_pair(struct testkit *k, struct testclient *cl, int type)
{
    testclient_pair(k, cl, type, NULL, 0);
    request(k, cl);
    assert_int_equal(testclient_head(k, cl, NULL, 0), 101);
}

static void expect_text(struct testkit *k, struct testclient *cl, const char *text)
{
    struct testframe f;
    testclient_frame(k, cl, &f);
    assert_int_equal(f.opcode, WS_OP_TEXT);
    assert_int_equal(f.len, strlen(text));
    assert_memory_equal(f.data, text, f.len);
    testframe_free(&f);
}

/* Runs the loop until it breaks by itself; false when the guard (seconds) had to stop it. */
static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    *(bool *)w->data = true;
    ev_break(loop, EVBREAK_ALL);
}

static bool run_until_break(struct testkit *k, double seconds)
{
    bool fired = false;
    ev_timer guard;
    ev_now_update(k->loop);
    ev_timer_init(&guard, on_watchdog, seconds, 0);
    guard.data = &fired;
    ev_timer_start(k->loop, &guard);
    ev_run(k->loop, 0);
    ev_timer_stop(k->loop, &guard);
    return !fired;
}

static void test_unix_listener_accepts(void **state)
{
    char path[128];
    struct testkit *k = start(state, path, sizeof(path));
    assert_int_equal(k->srv->nlisteners, 1);
    k->app.act.echo = true;
    struct testclient cl;
    testclient_dial(k, &cl, path);
    assert_int_equal(cl.conn->state, WS_CONN_CONNECTING);
    char peer[64];
    assert_string_equal(ws_connlog_peer(cl.conn, peer, sizeof(peer)), "unix");
    request(k, &cl);
    assert_int_equal(testclient_head(k, &cl, NULL, 0), 101);
    testclient_send(k, &cl, WS_OP_TEXT, "over unix", 9);
    expect_text(k, &cl, "over unix");
    assert_ptr_equal(ws_server_get(k->srv, cl.id), cl.conn);

    struct testclient h;
    testclient_dial(k, &h, path);
    const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    testclient_write(k, &h, req, strlen(req));
    assert_int_equal(testclient_head(k, &h, NULL, 0), 200);
    testclient_close(&h);
    testclient_close(&cl);
}

static void test_bad_listen_address(void **state)
{
    (void)state;
    /* a path that is taken by a regular file: the bind fails, whatever the address check said */
    char path[] = "/tmp/ws-test-server-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    char addr[64];
    snprintf(addr, sizeof(addr), "unix:%s", path);
    struct ws_config cfg;
    testkit_config(&cfg);
    testkit_set(&cfg, "listen", addr);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct testapp app;
    testapp_init(&app);
    char err[512] = "";
    assert_null(ws_server_new(loop, &cfg, &testapp_ops, &app, err, sizeof(err)));
    assert_non_null(strstr(err, path));
    unlink(path);
    ws_config_free(&cfg);
    testapp_free(&app);
    ev_loop_destroy(loop);
}

static void test_prepare_writes_once_per_wakeup(void **state)
{
    struct testkit *k = start(state, NULL, 0);
    struct testclient a, b;
    open_pair(k, &a, SOCK_STREAM);
    /* one packet per write on this one, so writes can be counted */
    open_pair(k, &b, SOCK_SEQPACKET);
    k->app.act.broadcast = 3;
    testclient_send(k, &a, WS_OP_TEXT, "hey", 3);

    /* a's message arrives in some iteration; what its callback queued for b is not written in
     * that iteration's callbacks... */
    for (int i = 0; i < 100 && !testapp_count(&k->app, TA_MESSAGE, a.id); i++)
        ev_run(k->loop, EVRUN_NOWAIT);
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, a.id), 1);
    uint8_t buf[4096];
    assert_int_equal(recv(b.fd, buf, sizeof(buf), 0), -1);
    assert_int_equal(errno, EAGAIN);
    assert_int_equal(ws_conn_buffered(b.conn), 3 * 5);
    assert_true(b.conn->in_flush_list);
    /* ...but by the next prepare pass, all three frames in one write */
    ev_run(k->loop, EVRUN_NOWAIT);
    assert_int_equal(ws_conn_buffered(b.conn), 0);
    ssize_t n = recv(b.fd, buf, sizeof(buf), 0);
    assert_int_equal(n, 3 * 5);
    for (int i = 0; i < 3; i++)
        assert_memory_equal(buf + 5 * i, "\x81\x03hey", 5);
    assert_int_equal(recv(b.fd, buf, sizeof(buf), 0), -1);
    /* the sender was excluded */
    assert_false(testclient_has_input(k, &a));
    testclient_close(&a);
    testclient_close(&b);
}

static void test_closed_conn_freed_after_iteration(void **state)
{
    struct testkit *k = start(state, NULL, 0);
    k->app.act.abort_on_message = true;
    k->app.act.close_on_message = 4005;
    struct testclient cl;
    open_pair(k, &cl, SOCK_STREAM);
    testclient_send(k, &cl, WS_OP_TEXT, "x", 1);
    for (int i = 0; i < 100 && !testapp_count(&k->app, TA_MESSAGE, cl.id); i++)
        ev_run(k->loop, EVRUN_NOWAIT);
    assert_int_equal(testapp_count(&k->app, TA_MESSAGE, cl.id), 1);
    /* dead but not buried: still in the registry, hidden from lookups, the app not told */
    assert_ptr_equal(testkit_conn(k, cl.id), cl.conn);
    assert_int_equal(cl.conn->state, WS_CONN_CLOSED);
    assert_null(ws_server_get(k->srv, cl.id));
    assert_int_equal(testapp_count(&k->app, TA_CLOSE, 0), 0);
    assert_int_equal(testapp_count(&k->app, TA_RELEASE, 0), 0);
    ev_run(k->loop, EVRUN_NOWAIT);
    assert_null(testkit_conn(k, cl.id));
    assert_int_equal(testapp_find(&k->app, TA_CLOSE, cl.id)->code, 4005);
    assert_true(testapp_index(&k->app, TA_CLOSE, cl.id) <
                testapp_index(&k->app, TA_RELEASE, cl.id));
    assert_int_equal(k->env->conns.count, 0);
    testclient_close(&cl);
}

static bool only_listed(void *ctx, struct ws_conn *c)
{
    const uint64_t *ids = ctx;
    return c->node.id == ids[0] || c->node.id == ids[1];
}

static void test_broadcast(void **state)
{
    char path[128];
    struct testkit *k = start(state, path, sizeof(path));
    struct testclient c[3], pending;
    for (int i = 0; i < 3; i++)
        open_pair(k, &c[i], SOCK_STREAM);
    testclient_dial(k, &pending, path); /* no handshake yet: not reached */

    assert_int_equal(ws_server_broadcast(k->srv, WS_OP_TEXT, "all", 3, 0, NULL, NULL), 3);
    for (int i = 0; i < 3; i++)
        expect_text(k, &c[i], "all");
    assert_int_equal(ws_server_broadcast(k->srv, WS_OP_TEXT, "not1", 4, c[1].id, NULL, NULL), 2);
    expect_text(k, &c[0], "not1");
    expect_text(k, &c[2], "not1");
    assert_false(testclient_has_input(k, &c[1]));
    uint64_t ids[2] = {c[0].id, c[1].id};
    assert_int_equal(ws_server_broadcast(k->srv, WS_OP_TEXT, "f", 1, c[0].id, only_listed, ids), 1);
    expect_text(k, &c[1], "f");
    assert_false(testclient_has_input(k, &c[0]));
    assert_false(testclient_has_input(k, &c[2]));
    assert_false(testclient_has_input(k, &pending));
    /* a closing connection is not reached */
    assert_int_equal(ws_conn_close(c[2].conn, 1000, NULL, 0), 0);
    assert_int_equal(ws_server_broadcast(k->srv, WS_OP_BINARY, "\x00", 1, 0, NULL, NULL), 2);
    struct testframe f;
    testclient_frame(k, &c[0], &f);
    assert_int_equal(f.opcode, WS_OP_BINARY);
    testframe_free(&f);
    for (int i = 0; i < 3; i++)
        testclient_close(&c[i]);
    testclient_close(&pending);
}

static void test_publish(void **state)
{
    struct testkit *k = start(state, NULL, 0);
    struct testclient c[3];
    for (int i = 0; i < 3; i++)
        open_pair(k, &c[i], SOCK_STREAM);
    ws_topics_subscribe(&k->env->topics, &c[0].conn->sub, "news", 4);
    ws_topics_subscribe(&k->env->topics, &c[2].conn->sub, "news", 4);
    ws_topics_subscribe(&k->env->topics, &c[1].conn->sub, "other", 5);

    assert_int_equal(ws_server_publish(k->srv, "news", 4, WS_OP_TEXT, "n1", 2, 0), 2);
    expect_text(k, &c[0], "n1");
    expect_text(k, &c[2], "n1");
    assert_false(testclient_has_input(k, &c[1]));
    assert_int_equal(ws_server_publish(k->srv, "news", 4, WS_OP_TEXT, "n2", 2, c[0].id), 1);
    expect_text(k, &c[2], "n2");
    assert_false(testclient_has_input(k, &c[0]));
    assert_int_equal(ws_server_publish(k->srv, "nobody", 6, WS_OP_TEXT, "x", 1, 0), 0);
    assert_int_equal(ws_server_publish(k->srv, "new", 3, WS_OP_TEXT, "x", 1, 0), 0);
    /* a subscriber that hung up is gone from its topics after the sweep */
    testclient_close(&c[2]);
    testkit_pump(k);
    assert_int_equal(ws_server_publish(k->srv, "news", 4, WS_OP_TEXT, "n3", 2, 0), 1);
    expect_text(k, &c[0], "n3");
    testclient_close(&c[0]);
    testclient_close(&c[1]);
}

static void test_get_closed_id(void **state)
{
    struct testkit *k = start(state, NULL, 0);
    struct testclient cl;
    open_pair(k, &cl, SOCK_STREAM);
    assert_ptr_equal(ws_server_get(k->srv, cl.id), cl.conn);
    assert_null(ws_server_get(k->srv, cl.id + 1));
    assert_null(ws_server_get(k->srv, 0));
    /* closing still counts as there; closed does not, even before it is freed */
    assert_int_equal(ws_conn_close(cl.conn, 1000, NULL, 0), 0);
    assert_ptr_equal(ws_server_get(k->srv, cl.id), cl.conn);
    ws_conn_abort(cl.conn, 1006, NULL);
    assert_null(ws_server_get(k->srv, cl.id));
    testkit_pump(k);
    assert_null(ws_server_get(k->srv, cl.id));
    testclient_close(&cl);
}

#define MANY 1200

static void test_graceful_shutdown_in_batches(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    cfg.shutdown_timeout = 10;
    char path[128];
    struct testkit *k = testkit_new_server(state, &cfg, path, sizeof(path));
    ws_config_free(&cfg);
    struct testclient *c = calloc(MANY + 1, sizeof(*c));
    for (int i = 0; i < MANY; i++) {
        testclient_pair(k, &c[i], SOCK_STREAM, NULL, 0);
        request(k, &c[i]);
    }
    testkit_pump(k);
    for (int i = 0; i < MANY; i++)
        assert_int_equal(testclient_head(k, &c[i], NULL, 0), 101);
    testclient_dial(k, &c[MANY], path); /* still in its handshake */
    assert_int_equal(k->env->nopen, MANY);

    ws_server_shutdown(k->srv, "test over");
    /* stop accepting first, then tell the app, then close */
    const struct testapp_event *e = testapp_find(&k->app, TA_SHUTDOWN, 0);
    assert_non_null(e);
    assert_string_equal(e->data, "test over");
    assert_int_equal(e->listeners, 0);
    assert_int_equal(e->closing, 0);
    assert_true(k->env->draining);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    assert_true(strlen(path) < sizeof(un.sun_path));
    memcpy(un.sun_path, path, strlen(path));
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&un, sizeof(un)), -1);
    close(fd);

    /* 500 per loop iteration */
    assert_int_equal(testkit_count_state(k, WS_CONN_CLOSING), 500);
    assert_int_equal(testkit_count_state(k, WS_CONN_OPEN), MANY - 500);
    ev_run(k->loop, EVRUN_NOWAIT);
    assert_int_equal(testkit_count_state(k, WS_CONN_CLOSING), 1000);
    ev_run(k->loop, EVRUN_NOWAIT);
    assert_int_equal(testkit_count_state(k, WS_CONN_CLOSING), MANY);
    assert_int_equal(testkit_count_state(k, WS_CONN_OPEN), 0);
    ev_run(k->loop, EVRUN_NOWAIT);
    assert_int_equal(k->env->conns.count, MANY); /* the one in its handshake was dropped */
    assert_int_equal(k->env->nopen, 0);

    /* every client gets 1001 and hangs up; the loop ends when the last is gone */
    for (int i = 0; i < MANY; i++) {
        struct testframe f;
        testclient_frame(k, &c[i], &f);
        assert_int_equal(f.opcode, WS_OP_CLOSE);
        assert_int_equal(f.code, 1001);
        testframe_free(&f);
        testclient_close(&c[i]);
    }
    testclient_close(&c[MANY]);
    assert_true(run_until_break(k, 2));
    assert_int_equal(k->env->conns.count, 0);
    assert_int_equal(testapp_count(&k->app, TA_CLOSE, 0), MANY);
    assert_int_equal(testapp_count(&k->app, TA_RELEASE, 0), MANY + 1);
    assert_int_equal(k->env->stats->closes_by_code[1001], MANY);
    assert_true(testapp_index(&k->app, TA_SHUTDOWN, 0) < testapp_index(&k->app, TA_CLOSE, 0));
    free(c);
}

static void test_shutdown_timeout_forces_the_rest(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    cfg.shutdown_timeout = 0.05;
    cfg.close_timeout = 5;
    struct testkit *k = testkit_new_server(state, &cfg, NULL, 0);
    ws_config_free(&cfg);
    struct testclient c[10];
    for (int i = 0; i < 10; i++)
        open_pair(k, &c[i], SOCK_STREAM);
    ws_server_shutdown(k->srv, "soon");
    ws_server_shutdown(k->srv, "twice"); /* once only */
    assert_int_equal(testapp_count(&k->app, TA_SHUTDOWN, 0), 1);
    /* the clients never answer the close */
    double t0 = ev_time();
    assert_true(run_until_break(k, 1));
    double took = ev_time() - t0;
    assert_true(took >= 0.04);
    assert_true(took < 0.9);
    assert_int_equal(testkit_count_state(k, WS_CONN_CLOSED), 10);
    ws_conn_run_pending(k->env);
    assert_int_equal(k->env->conns.count, 0);
    assert_int_equal(testapp_count(&k->app, TA_CLOSE, 0), 10);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(testapp_find(&k->app, TA_CLOSE, c[i].id)->code, 1001);
        testclient_close(&c[i]);
    }
}

static void test_shutdown_without_connections(void **state)
{
    struct testkit *k = start(state, NULL, 0);
    ws_server_shutdown(k->srv, "idle");
    assert_true(run_until_break(k, 1));
    assert_int_equal(testapp_count(&k->app, TA_SHUTDOWN, 0), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_unix_listener_accepts, testkit_teardown),
        cmocka_unit_test_teardown(test_bad_listen_address, testkit_teardown),
        cmocka_unit_test_teardown(test_prepare_writes_once_per_wakeup, testkit_teardown),
        cmocka_unit_test_teardown(test_closed_conn_freed_after_iteration, testkit_teardown),
        cmocka_unit_test_teardown(test_broadcast, testkit_teardown),
        cmocka_unit_test_teardown(test_publish, testkit_teardown),
        cmocka_unit_test_teardown(test_get_closed_id, testkit_teardown),
        cmocka_unit_test_teardown(test_graceful_shutdown_in_batches, testkit_teardown),
        cmocka_unit_test_teardown(test_shutdown_timeout_forces_the_rest, testkit_teardown),
        cmocka_unit_test_teardown(test_shutdown_without_connections, testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
