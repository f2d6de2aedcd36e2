/* Unit tests for the PostgreSQL pool (pg_client.c, connecting in pg_conn.c) on a real libev loop
 * without a database: a conninfo that does not parse, a refused port, a server that never answers
 * (the connect timeout, a waiter that leaves), and a fake server that refuses the login. Queries
 * against a real server are tests/integration/test_pg.py's. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testkit.h"
#include "ws/pg_client.h"

#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct got {
    int calls;
    bool in_call; /* set around the acquire call: done must not run inside it */
    bool reentered;
    struct ws_pg_conn *conn;
    char err[512];
    struct ev_loop *loop;
};

static void on_conn(void *ud, struct ws_pg_conn *c, const char *err)
{
    struct got *g = ud;
    g->calls++;
    g->reentered = g->in_call;
    g->conn = c;
    snprintf(g->err, sizeof(g->err), "%s", err ? err : "");
    ev_break(g->loop, EVBREAK_ALL);
}

static void on_deadline(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

/* Runs loop until on_conn breaks it or seconds pass. */
static void run_for(struct ev_loop *loop, double seconds)
{
    ev_timer deadline;
    ev_timer_init(&deadline, on_deadline, seconds, 0);
    ev_timer_start(loop, &deadline);
    ev_run(loop, 0);
    ev_timer_stop(loop, &deadline);
}

static void test_bad_conninfo(void **state)
{
    (void)state;
    char err[256];
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_null(ws_pg_pool_new(loop, "host=127.0.0.1 port", 4, 1, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid conninfo: "));
    assert_non_null(strstr(err, "port"));
    assert_null(ws_pg_pool_new(loop, "postgresql://%zz", 4, 1, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid conninfo: "));
    ws_pg_pool_free(NULL);
    ev_loop_destroy(loop);
}

static void test_refused_port_fails_the_waiter_from_the_loop(void **state)
{
    (void)state;
    int port;
    int fd = testkit_listen_tcp(&port);
    close(fd); /* nobody listens there now */
    char conninfo[128], err[256];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d user=x dbname=x sslmode=disable",
             port);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct ws_pg_pool *p = ws_pg_pool_new(loop, conninfo, 2, 5, err, sizeof(err));
    assert_non_null(p);
    assert_null(ws_pg_pool_take(p)); /* nothing open yet */
    struct got g = {.loop = loop, .in_call = true};
    assert_non_null(ws_pg_pool_acquire(p, on_conn, &g));
    g.in_call = false;
    assert_int_equal(ws_pg_pool_waiting(p), 1);
    run_for(loop, 5);
    assert_int_equal(g.calls, 1);
    assert_false(g.reentered);
    assert_null(g.conn);
    assert_non_null(strstr(g.err, "cannot connect: "));
    assert_non_null(strstr(g.err, "refused"));
    char port_s[16];
    snprintf(port_s, sizeof(port_s), "%d", port);
    assert_non_null(strstr(g.err, port_s));
    assert_int_equal(ws_pg_pool_waiting(p), 0);
    assert_int_equal(ws_pg_pool_open(p), 0);
    ws_pg_pool_free(p);
    ev_loop_destroy(loop);
}

static void test_silent_server_times_out_and_a_waiter_can_leave(void **state)
{
    (void)state;
    int port;
    int fd = testkit_listen_tcp(&port); /* accepted by the kernel, never answered */
    char conninfo[128], err[256];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d user=x dbname=x sslmode=disable",
             port);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    struct ws_pg_pool *p = ws_pg_pool_new(loop, conninfo, 1, 0.2, err, sizeof(err));
    assert_non_null(p);
    struct got left = {.loop = loop}, stays = {.loop = loop};
    struct ws_pg_wait *w = ws_pg_pool_acquire(p, on_conn, &left);
    ws_pg_pool_acquire(p, on_conn, &stays);
    assert_int_equal(ws_pg_pool_waiting(p), 2);
    ws_pg_pool_acquire_cancel(w);
    assert_int_equal(ws_pg_pool_waiting(p), 1);
    double t0 = ev_time();
    run_for(loop, 5);
    double took = ev_time() - t0;
    assert_int_equal(left.calls, 0);
    assert_int_equal(stays.calls, 1);
    assert_string_equal(stays.err, "cannot connect: timeout");
    assert_true(took > 0.15 && took < 2);
    /* a pool freed with a connection attempt and a waiter in flight: no callback */
    struct got last = {.loop = loop};
    ws_pg_pool_acquire(p, on_conn, &last);
    run_for(loop, 0.05);
    assert_int_equal(ws_pg_pool_open(p), 1); /* connecting */
    ws_pg_pool_free(p);
    assert_int_equal(last.calls, 0);
    close(fd);
    ev_loop_destroy(loop);
}

/* A fake server that answers a StartupMessage with a FATAL ErrorResponse (protocol 3.0,
 * "Message Formats": 'E', int32 length, fields S/C/M each NUL-terminated, a final NUL). It
 * shares the loop with the client, so it reads only when the startup has arrived. */
static ev_io peer;

static void on_startup(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    char buf[512];
    (void)!read(w->fd, buf, sizeof(buf));
    static const char fields[] = "SFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0";
    uint8_t msg[128];
    uint32_t len = 4 + sizeof(fields); /* the fields, their final NUL included */
    msg[0] = 'E';
    msg[1] = (uint8_t)(len >> 24);
    msg[2] = (uint8_t)(len >> 16);
    msg[3] = (uint8_t)(len >> 8);
    msg[4] = (uint8_t)len;
    memcpy(msg + 5, fields, sizeof(fields));
    (void)!write(w->fd, msg, 1 + len);
    ev_io_stop(loop, w);
    close(w->fd);
}

static void on_login(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)revents;
    int fd = accept(w->fd, NULL, NULL);
    if (fd < 0)
        return;
    ev_io_init(&peer, on_startup, fd, EV_READ);
    ev_io_start(loop, &peer);
}

static void test_login_refused_names_the_reason(void **state)
{
    (void)state;
    int port;
    int fd = testkit_listen_tcp(&port);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    ev_io srv;
    ev_io_init(&srv, on_login, fd, EV_READ);
    ev_io_start(loop, &srv);
    char conninfo[128], err[256];
    snprintf(conninfo, sizeof(conninfo), "host=127.0.0.1 port=%d user=x dbname=x sslmode=disable",
             port);
    struct ws_pg_pool *p = ws_pg_pool_new(loop, conninfo, 1, 5, err, sizeof(err));
    struct got g = {.loop = loop};
    ws_pg_pool_acquire(p, on_conn, &g);
    run_for(loop, 5);
    assert_int_equal(g.calls, 1);
    assert_null(g.conn);
    assert_non_null(strstr(g.err, "cannot connect: "));
    assert_non_null(strstr(g.err, "password authentication failed"));
    assert_int_equal(ws_pg_pool_open(p), 0);
    ws_pg_pool_free(p);
    ev_io_stop(loop, &srv);
    close(fd);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_conninfo),
        cmocka_unit_test(test_refused_port_fails_the_waiter_from_the_loop),
        cmocka_unit_test(test_silent_server_times_out_and_a_waiter_can_leave),
        cmocka_unit_test(test_login_refused_names_the_reason),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
