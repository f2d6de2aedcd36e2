/* Unit tests for reading one request (src/proto/request.c) and the body framing and chunked
 * decoder under it (src/proto/http_body.c): Content-Length and chunked bodies split at every byte,
 * extensions and trailers skipped, the limits (head, body, the coding's own bytes), request
 * smuggling shapes refused, and an upgrade's first frame bytes kept. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/err.h"
#include "ws/request.h"

#include <stdio.h>
#include <string.h>

static const struct ws_request_limits lim = {1024, 100, 64};

/* Feeds text in pieces of step bytes; returns the first result that is not WS_E_AGAIN. */
static int feed(struct ws_request *r, const char *text, size_t n, size_t step,
                struct ws_http_request *req)
{
    ws_request_init(r);
    int rc = WS_E_AGAIN;
    for (size_t off = 0; off < n && rc == WS_E_AGAIN; off += step) {
        size_t k = n - off < step ? n - off : step;
        rc = ws_request_feed(r, (const uint8_t *)text + off, k, &lim, req);
    }
    return rc;
}

/* The body of text[0..n) read at every split, each time the same. */
static void expect_body_n(const char *text, size_t n, const char *body, size_t body_len)
{
    for (size_t step = 1; step <= 64; step++) {
        struct ws_request r;
        struct ws_http_request req;
        assert_int_equal(feed(&r, text, n, step, &req), 0);
        assert_int_equal(req.body.n, body_len);
        assert_memory_equal(req.body.p, body, body_len);
        assert_int_equal(req.method.n, 4);
        ws_request_reset(&r);
    }
}

static void expect_body(const char *text, const char *body, size_t body_len)
{
    expect_body_n(text, strlen(text), body, body_len);
}

static void expect_error(const char *text, int err)
{
    size_t n = strlen(text);
    for (size_t step = 1; step <= 64; step *= 2) {
        struct ws_request r;
        struct ws_http_request req;
        assert_int_equal(feed(&r, text, n, step, &req), err);
        ws_request_reset(&r);
    }
}

static void test_content_length(void **state)
{
    (void)state;
    expect_body("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "hello", 5);
    /* a list of identical values stands for one (RFC 9110 §8.6) */
    expect_body("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", "abc", 3);
    /* no framing: no body, even with bytes after the head */
    struct ws_request r;
    struct ws_http_request req;
    const char *get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(feed(&r, get, strlen(get), 1, &req), 0);
    assert_null(req.body.p);
    ws_request_reset(&r);
}

static void test_chunked(void **state)
{
    (void)state;
    expect_body("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                "5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\n\r\n",
                "hello 0123456789", 16);
    expect_body("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n"
                "0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n",
                "", 0);
    const char nul[] = "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "00000003\r\na\0c\r\n0\r\n\r\n";
    expect_body_n(nul, sizeof(nul) - 1, "a\0c", 3);
}

static void test_limits(void **state)
{
    (void)state;
    char big[2048];
    memset(big, 'a', sizeof(big));
    memcpy(big, "POST /", 6);
    big[sizeof(big) - 1] = 0;
    expect_error(big, WS_E_HTTP_TOO_LARGE);
    expect_error("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n",
                 WS_E_HTTP_BODY_TOO_LARGE);
    expect_body("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", "", 0);
    /* chunked: the data past the limit, and a coding that never ends */
    expect_error("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "64\r\n",
                 WS_E_AGAIN); /* 100 bytes announced: within the limit, waiting */
    expect_error("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "65\r\n",
                 WS_E_HTTP_BODY_TOO_LARGE);
    static char endless[70000 + 200];
    strcpy(endless, "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;");
    size_t n = strlen(endless);
    memset(endless + n, 'e', sizeof(endless) - n - 1);
    expect_error(endless, WS_E_HTTP_BODY_TOO_LARGE);
}

static void test_malformed(void **state)
{
    (void)state;
    const char *h = "POST /a HTTP/1.1\r\nHost: x\r\n";
    const char *tails[] = {
        "Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        "Content-Length: 1x\r\n\r\na",
        "Content-Length: +1\r\n\r\na",
        "Content-Length: 12345678901234567890\r\n\r\n",
        "Transfer-Encoding: gzip\r\n\r\n",
        "Transfer-Encoding: chunked, chunked\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\nx\r\n",
        "Transfer-Encoding: chunked\r\n\r\n1\nx\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n0\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\nbad\ntrailer\r\n\r\n",
        "Transfer-Encoding: chunked\r\n\r\n11111111111111111\r\n",
    };
    for (size_t i = 0; i < sizeof(tails) / sizeof(tails[0]); i++) {
        char text[256];
        snprintf(text, sizeof(text), "%s%s", h, tails[i]);
        for (size_t step = 1; step <= 64; step *= 2) {
            struct ws_request r;
            struct ws_http_request req;
            int rc = feed(&r, text, strlen(text), step, &req);
            if (rc != WS_E_HTTP_BAD)
                fail_msg("tail %zu step %zu: %d", i, step, rc);
            ws_request_reset(&r);
        }
    }
}

/* An upgrade has no body: bytes after its head are the first frames and stay in the buffer. */
static void test_upgrade_keeps_frames(void **state)
{
    (void)state;
    const char text[] =
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Content-Length: 4\r\n\r\n\x81\x80\x01\x02";
    struct ws_request r;
    struct ws_http_request req;
    assert_int_equal(feed(&r, text, sizeof(text) - 1, 64, &req), 0);
    assert_null(req.body.p);
    assert_int_equal(r.in.len - req.head_len, 4);
    assert_memory_equal(r.in.data + req.head_len, "\x81\x80\x01\x02", 4);
    struct ws_http_request head;
    assert_true(ws_request_head(&r, &head));
    assert_int_equal(head.head_len, req.head_len);
    ws_request_reset(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_content_length),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_upgrade_keeps_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
