/* Unit tests for the outbound HTTP client (http_client.c) on a real libev loop against a tiny
 * server in the test: a response, a body over the limit, a refused port, cancelling, and the
 * concurrency cap with its FIFO. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testkit.h"

#include "ws/http_client.h"

#include <arpa/inet.h>
#include <ev.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* The test server: accepts, reads the request head, writes the canned answer, closes. */
struct server {
    ev_io io;
    const char *answer;
};

static void on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    (void)revents;
    struct server *s = (struct server *)w;
    int fd = accept(w->fd, NULL, NULL);
    if (fd < 0)
        return;
    char buf[4096];
    size_t got = 0;
    while (got < sizeof(buf) - 1) {
        ssize_t n = read(fd, buf + got, sizeof(buf) - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
        buf[got] = 0;
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    (void)!write(fd, s->answer, strlen(s->answer));
    close(fd);
}

struct outcome {
    int calls;
    struct ws_http_result res;
    struct ev_loop *loop;
};

static void on_done(void *ud, struct ws_http_result *res)
{
    struct outcome *o = ud;
    o->calls++;
    o->res = *res;
    ev_break(o->loop, EVBREAK_ALL);
}

static void on_guard(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

/* Runs the loop until a callback or 5 s. */
static void run_loop(struct ev_loop *loop)
{
    ev_timer guard;
    ev_timer_init(&guard, on_guard, 5, 0);
    ev_timer_start(loop, &guard);
    ev_run(loop, 0);
    ev_timer_stop(loop, &guard);
}

static struct ws_http_opts opts_for(char *url, size_t cap, int port, const char *path)
{
    snprintf(url, cap, "http://127.0.0.1:%d%s", port, path);
    struct ws_http_opts o;
    memset(&o, 0, sizeof(o));
    o.url = url;
    o.timeout = 5;
    o.max_body = 1 << 20;
    return o;
}

static void test_response(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    int port;
    struct server s = {.answer = "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-A: b\r\n"
                                 "Connection: close\r\n\r\nhi"};
    int lfd = testkit_listen_tcp(&port);
    ev_io_init(&s.io, on_accept, lfd, EV_READ);
    ev_io_start(loop, &s.io);
    struct ws_http_client *hc = ws_http_client_new(loop, 4);
    assert_non_null(hc);
    char url[128], err[128];
    struct ws_http_opts o = opts_for(url, sizeof(url), port, "/x?q=1");
    struct outcome out = {.loop = loop};
    assert_non_null(ws_http_client_request(hc, &o, on_done, &out, err, sizeof(err)));
    assert_int_equal(out.calls, 0); /* never from inside the call */
    run_loop(loop);
    assert_int_equal(out.calls, 1);
    assert_true(out.res.ok);
    assert_int_equal(out.res.status, 201);
    assert_int_equal(out.res.body.len, 2);
    assert_memory_equal(out.res.body.data, "hi", 2);
    ws_buf_append(&out.res.headers, "", 1);
    assert_non_null(strstr((char *)out.res.headers.data, "X-A: b\r\n"));
    ws_http_result_free(&out.res);
    assert_int_equal(ws_http_client_active(hc), 0);
    ws_http_client_free(hc);
    ev_io_stop(loop, &s.io);
    close(lfd);
    ev_loop_destroy(loop);
}

static void test_body_over_the_limit(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    int port;
    struct server s = {.answer = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 "a\r\n0123456789\r\n0\r\n\r\n"};
    int lfd = testkit_listen_tcp(&port);
    ev_io_init(&s.io, on_accept, lfd, EV_READ);
    ev_io_start(loop, &s.io);
    struct ws_http_client *hc = ws_http_client_new(loop, 4);
    char url[128], err[128];
    struct ws_http_opts o = opts_for(url, sizeof(url), port, "/");
    o.max_body = 4;
    struct outcome out = {.loop = loop};
    assert_non_null(ws_http_client_request(hc, &o, on_done, &out, err, sizeof(err)));
    run_loop(loop);
    assert_int_equal(out.calls, 1);
    assert_false(out.res.ok);
    assert_non_null(strstr(out.res.err, "response too large"));
    ws_http_result_free(&out.res);
    ws_http_client_free(hc);
    ev_io_stop(loop, &s.io);
    close(lfd);
    ev_loop_destroy(loop);
}

static void test_refused_names_the_port(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    int port;
    close(testkit_listen_tcp(&port)); /* nobody listens there now */
    struct ws_http_client *hc = ws_http_client_new(loop, 4);
    char url[128], err[128], want[16];
    struct ws_http_opts o = opts_for(url, sizeof(url), port, "/");
    struct outcome out = {.loop = loop};
    assert_non_null(ws_http_client_request(hc, &o, on_done, &out, err, sizeof(err)));
    run_loop(loop);
    assert_int_equal(out.calls, 1);
    assert_false(out.res.ok);
    snprintf(want, sizeof(want), "%d", port);
    assert_non_null(strstr(out.res.err, want));
    ws_http_result_free(&out.res);
    ws_http_client_free(hc);
    ev_loop_destroy(loop);
}

static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)w;
    (void)revents;
    ev_break(loop, EVBREAK_ALL);
}

/* Lets the loop run for seconds. */
static void spin(struct ev_loop *loop, double seconds)
{
    ev_timer t;
    ev_timer_init(&t, on_tick, seconds, 0);
    ev_timer_start(loop, &t);
    ev_run(loop, 0);
    ev_timer_stop(loop, &t);
}

static void test_cap_queue_and_cancel(void **state)
{
    (void)state;
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    int port;
    int lfd = testkit_listen_tcp(&port); /* never accepts: the requests hang */
    struct ws_http_client *hc = ws_http_client_new(loop, 1);
    char url[128], err[128];
    struct ws_http_opts o = opts_for(url, sizeof(url), port, "/");
    struct outcome a = {.loop = loop}, b = {.loop = loop};
    struct ws_http_req *ra = ws_http_client_request(hc, &o, on_done, &a, err, sizeof(err));
    struct ws_http_req *rb = ws_http_client_request(hc, &o, on_done, &b, err, sizeof(err));
    assert_non_null(ra);
    assert_non_null(rb);
    assert_int_equal(ws_http_client_active(hc), 1);
    assert_int_equal(ws_http_client_queued(hc), 1);
    spin(loop, 0.1);
    ws_http_client_cancel(ra); /* the queued one takes its place */
    assert_int_equal(ws_http_client_active(hc), 1);
    assert_int_equal(ws_http_client_queued(hc), 0);
    ws_http_client_set_max(hc, 2);
    spin(loop, 0.1);
    ws_http_client_cancel(rb);
    assert_int_equal(ws_http_client_active(hc), 0);
    spin(loop, 0.05);
    assert_int_equal(a.calls, 0); /* a cancelled request never calls back */
    assert_int_equal(b.calls, 0);
    /* freeing with requests in flight aborts them without callbacks */
    ws_http_client_request(hc, &o, on_done, &a, err, sizeof(err));
    spin(loop, 0.05);
    ws_http_client_free(hc);
    assert_int_equal(a.calls, 0);
    ws_http_client_free(NULL);
    close(lfd);
    ev_loop_destroy(loop);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_response),
        cmocka_unit_test(test_body_over_the_limit),
        cmocka_unit_test(test_refused_names_the_port),
        cmocka_unit_test(test_cap_queue_and_cancel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
