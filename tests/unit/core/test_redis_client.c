/* Unit tests for the pooled Redis client (redis_client.c) on a real libev loop: a refused port
 * (answered from the loop, then at once while backing off), and replies of every kind copied out
 * of hiredis (redis_reply.c) from a canned server in the test. URL parsing: test_redis_dial.c.
 * Real Redis: the integration tests (tests/integration/test_redis_client.py). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testkit.h"

#include "ws/redis_client.h"

#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct outcome {
    int calls;
    bool inside; /* set while ws_redis_command runs: done must not run then */
    bool ran_inside;
    struct ws_redis_result res;
    struct ev_loop *loop;
};

static void on_done(void *ud, struct ws_redis_result *res)
{
    struct outcome *o = ud;
    o->calls++;
    o->ran_inside = o->ran_inside || o->inside;
    o->res = *res;
    ev_break(o->loop, EVBREAK_ALL);
}

static struct ws_redis_req *send_ping(struct ws_redis *r, struct outcome *o, char *err)
{
    const char *argv[] = {"PING"};
    size_t len[] = {4};
    int argc[] = {1};
    o->inside = true;
    struct ws_redis_req *q = ws_redis_command(r, 1, argc, argv, len, on_done, o, err, 256);
    o->inside = false;
    return q;
}

static void test_refused_then_backing_off(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    int port;
    close(testkit_listen_tcp(&port)); /* a port nobody listens on */
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    struct ws_redis_addr addr;
    assert_int_equal(ws_redis_parse_url(url, &addr), 0);
    struct ws_redis *r = ws_redis_new(loop, &addr, 4, 2);
    struct outcome o = {.loop = loop};
    char err[256];
    assert_non_null(send_ping(r, &o, err));
    ev_run(loop, 0);
    assert_int_equal(o.calls, 1);
    assert_false(o.ran_inside);
    assert_false(o.res.ok);
    char want[64];
    snprintf(want, sizeof(want), "redis 127.0.0.1:%d: ", port);
    assert_memory_equal(o.res.err, want, strlen(want));
    ws_redis_result_free(&o.res);
    /* backing off: refused at once, without a callback */
    assert_null(send_ping(r, &o, err));
    assert_memory_equal(err, want, strlen(want));
    assert_int_equal(o.calls, 1);
    assert_int_equal(ws_redis_open(r), 0);
    ws_redis_free(r);
    ev_loop_destroy(loop);
}

/* The canned server: accepts one connection, reads a request and writes the answer. */
struct canned {
    ev_io io, peer;
    const char *answer;
};

static void on_peer(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct canned *c = (struct canned *)((char *)w - offsetof(struct canned, peer));
    char buf[4096];
    ssize_t n = read(w->fd, buf, sizeof(buf));
    if (n <= 0) {
        ev_io_stop(loop, w);
        close(w->fd);
        return;
    }
    assert_int_equal(write(w->fd, c->answer, strlen(c->answer)), (ssize_t)strlen(c->answer));
}

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    struct canned *c = (struct canned *)w;
    int fd = accept(w->fd, NULL, NULL);
    assert_true(fd >= 0);
    ev_io_init(&c->peer, on_peer, fd, EV_READ);
    ev_io_start(loop, &c->peer);
}

static void test_replies_of_every_kind(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    int port;
    struct canned c = {
        .answer =
            ":-5\r\n*3\r\n$1\r\na\r\n$-1\r\n*1\r\n+OK\r\n-ERR no\r\n$2\r\nab\r\n*-1\r\n+PONG\r\n"};
    int lfd = testkit_listen_tcp(&port);
    ev_io_init(&c.io, on_accept, lfd, EV_READ);
    ev_io_start(loop, &c.io);
    char url[64];
    snprintf(url, sizeof(url), "127.0.0.1:%d", port);
    struct ws_redis_addr addr;
    assert_int_equal(ws_redis_parse_url(url, &addr), 0);
    struct ws_redis *r = ws_redis_new(loop, &addr, 1, 2);
    /* six commands in one round trip */
    const char *argv[] = {"DECRBY", "k", "5", "MGET", "a", "b", "c", "X", "Y", "GET", "z", "Z"};
    size_t len[12];
    for (int i = 0; i < 12; i++)
        len[i] = strlen(argv[i]);
    int argc[] = {3, 4, 1, 1, 2, 1};
    struct outcome o = {.loop = loop};
    char err[256];
    o.inside = true;
    assert_non_null(ws_redis_command(r, 6, argc, argv, len, on_done, &o, err, sizeof(err)));
    o.inside = false;
    assert_int_equal(ws_redis_busy(r), 0); /* not connected yet: waiting in the queue */
    ev_run(loop, 0);
    assert_int_equal(o.calls, 1);
    assert_false(o.ran_inside);
    assert_true(o.res.ok);
    assert_int_equal(o.res.n, 6);
    struct ws_redis_value *v = o.res.values;
    assert_int_equal(v[0].kind, WS_REDIS_INTEGER);
    assert_int_equal(v[0].integer, -5);
    assert_int_equal(v[1].kind, WS_REDIS_ARRAY);
    assert_int_equal(v[1].len, 3);
    assert_int_equal(v[1].elements[0].kind, WS_REDIS_STRING);
    assert_string_equal(v[1].elements[0].str, "a");
    assert_int_equal(v[1].elements[1].kind, WS_REDIS_NIL);
    assert_int_equal(v[1].elements[2].kind, WS_REDIS_ARRAY);
    assert_int_equal(v[1].elements[2].elements[0].kind, WS_REDIS_STATUS);
    assert_string_equal(v[1].elements[2].elements[0].str, "OK");
    assert_int_equal(v[2].kind, WS_REDIS_ERROR);
    assert_string_equal(v[2].str, "ERR no");
    assert_int_equal(v[3].kind, WS_REDIS_STRING);
    assert_int_equal(v[3].len, 2);
    assert_int_equal(v[4].kind, WS_REDIS_NIL);
    assert_int_equal(v[5].kind, WS_REDIS_STATUS);
    assert_string_equal(v[5].str, "PONG");
    ws_redis_result_free(&o.res);
    assert_int_equal(ws_redis_open(r), 1);
    assert_int_equal(ws_redis_busy(r), 0);
    ws_redis_free(r);
    ev_io_stop(loop, &c.io);
    if (ev_is_active(&c.peer)) {
        ev_io_stop(loop, &c.peer);
        close(c.peer.fd);
    }
    close(lfd);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refused_then_backing_off),
        cmocka_unit_test(test_replies_of_every_kind),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
