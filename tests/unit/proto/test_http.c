/* Unit tests for the request-head parser (src/http.c): request line, fields, limits, split and
 * byte-by-byte feeding, pipelined bytes, and the comma-list helpers. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/err.h"
#include "ws/http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HEAD 8192

static const char simple[] = "GET /chat?room=1 HTTP/1.1\r\n"
                             "Host: example.com\r\n"
                             "Upgrade: websocket\r\n"
                             "Connection: Upgrade\r\n"
                             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                             "Sec-WebSocket-Version: 13\r\n"
                             "\r\n";

static struct ws_http_request req;

static int parse_n(const char *s, size_t n, size_t max)
{
    size_t scanned = 0;
    return ws_http_parse(s, n, max, &scanned, &req);
}

static int parse(const char *s)
{
    return parse_n(s, strlen(s), MAX_HEAD);
}

static void assert_span(struct ws_span span, const char *s)
{
    assert_int_equal(span.n, strlen(s));
    assert_memory_equal(span.p, s, span.n);
}

static void assert_header(const char *name, const char *value)
{
    const struct ws_span *v = ws_http_header(&req, name);
    assert_non_null(v);
    assert_span(*v, value);
}

/* --- request line ---------------------------------------------------------------------------- */

static void test_simple(void **state)
{
    (void)state;
    assert_int_equal(parse(simple), 0);
    assert_int_equal(req.head_len, strlen(simple));
    assert_span(req.method, "GET");
    assert_span(req.target, "/chat?room=1");
    assert_int_equal(req.version_minor, 1);
    assert_int_equal(req.nheaders, 5);
    assert_span(req.headers[0].name, "Host");
    assert_span(req.headers[0].value, "example.com");
    assert_span(req.headers[4].name, "Sec-WebSocket-Version");
    assert_span(req.headers[4].value, "13");
    /* Spans point into the caller's buffer. */
    assert_ptr_equal(req.method.p, simple);
}

static void test_no_fields(void **state)
{
    (void)state;
    assert_int_equal(parse("GET / HTTP/1.1\r\n\r\n"), 0);
    assert_int_equal(req.nheaders, 0);
    assert_int_equal(req.head_len, 18);
    assert_null(ws_http_header(&req, "Host"));
}

static void test_http10(void **state)
{
    (void)state;
    assert_int_equal(parse("HEAD /x HTTP/1.0\r\nHost: a\r\n\r\n"), 0);
    assert_span(req.method, "HEAD");
    assert_int_equal(req.version_minor, 0);
}

static void test_other_methods_and_targets(void **state)
{
    (void)state;
    assert_int_equal(parse("OPTIONS * HTTP/1.1\r\n\r\n"), 0);
    assert_span(req.target, "*");
    assert_int_equal(parse("CONNECT example.com:443 HTTP/1.1\r\n\r\n"), 0);
    assert_span(req.target, "example.com:443");
    assert_int_equal(parse("M-SEARCH http://a/b?c=%20 HTTP/1.1\r\n\r\n"), 0);
    assert_span(req.method, "M-SEARCH");
    /* obs-text in the target is left for the router to judge. */
    assert_int_equal(parse("GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n"), 0);
    assert_span(req.target, "/caf\xc3\xa9");
}

static void test_bad_version(void **state)
{
    (void)state;
    /* RFC 9112 §2.3: well-formed but not HTTP/1.x -> 505. */
    assert_int_equal(parse("GET / HTTP/2.0\r\n\r\n"), WS_E_HTTP_VERSION);
    assert_int_equal(parse("GET / HTTP/0.9\r\n\r\n"), WS_E_HTTP_VERSION);
    /* RFC 9110 §2.5: HTTP/1.x with a higher minor is served as 1.1. */
    assert_int_equal(parse("GET / HTTP/1.2\r\n\r\n"), 0);
    assert_int_equal(parse("GET / HTTP/3.1\r\n\r\n"), WS_E_HTTP_VERSION);
    /* Anything else is garbage -> 400. */
    assert_int_equal(parse("GET / http/1.1\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.10\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1 \r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/a.b\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/10.0\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / FTP/1.1\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET /\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / \r\n\r\n"), WS_E_HTTP_BAD);
}

static void test_bad_request_line(void **state)
{
    (void)state;
    assert_int_equal(parse("GET  / HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD);   /* empty target */
    assert_int_equal(parse("GET /  HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD);   /* two spaces */
    assert_int_equal(parse("GET /a b HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD); /* space in target */
    assert_int_equal(parse("GET /a\tb HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET /a\x01 HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET /a\x7f HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("G(T / HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD); /* method not a token */
    assert_int_equal(parse("GET\t/ HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse(" GET / HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET\r\n\r\n"), WS_E_HTTP_BAD);
}

static void test_empty(void **state)
{
    (void)state;
    size_t scanned = 0;
    assert_int_equal(ws_http_parse("", 0, MAX_HEAD, &scanned, &req), WS_E_AGAIN);
    assert_int_equal(ws_http_parse(NULL, 0, MAX_HEAD, &scanned, &req), WS_E_AGAIN);
    /* An empty request line. */
    assert_int_equal(parse("\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("\r\n"), WS_E_HTTP_BAD);
}

static void test_garbage(void **state)
{
    (void)state;
    /* A TLS ClientHello on the plain port fails at once, without waiting for more bytes. */
    static const char tls[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01};
    assert_int_equal(parse_n(tls, sizeof tls, MAX_HEAD), WS_E_HTTP_BAD);
    assert_int_equal(parse_n(tls, 1, MAX_HEAD), WS_E_HTTP_BAD);
    /* NUL is refused as soon as it arrives. */
    assert_int_equal(parse_n("GET /\0", 6, MAX_HEAD), WS_E_HTTP_BAD);
    assert_int_equal(parse("hello"), WS_E_AGAIN);
    assert_int_equal(parse("hello\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\n:\r\n\r\n"), WS_E_HTTP_BAD);

    /* Pseudo-random bytes never crash and never claim success. */
    unsigned x = 12345;
    char junk[512];
    for (int round = 0; round < 2000; round++) {
        for (size_t i = 0; i < sizeof junk; i++) {
            x = x * 1103515245u + 12345u;
            junk[i] = (char)(x >> 16);
        }
        int rc = parse_n(junk, sizeof junk, 256);
        assert_true(rc == WS_E_HTTP_BAD || rc == WS_E_HTTP_TOO_LARGE || rc == WS_E_AGAIN ||
                    rc == WS_E_HTTP_VERSION || rc == 0);
    }
}

/* --- line endings and folding --------------------------------------------------------------- */

static void test_bare_lf(void **state)
{
    (void)state;
    /* RFC 9112 §2.2: only CRLF is accepted; a bare LF anywhere is refused, even before the head
     * is complete. */
    assert_int_equal(parse("GET / HTTP/1.1\n\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\r\n\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\nb\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("\n"), WS_E_HTTP_BAD);
}

static void test_bare_cr(void **state)
{
    (void)state;
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n"), WS_E_HTTP_BAD);
    /* A CR at the end of the buffer is not yet known to be bare. */
    assert_int_equal(parse("GET / HTTP/1.1\r"), WS_E_AGAIN);
}

static void test_obs_fold(void **state)
{
    (void)state;
    /* RFC 9112 §5.2: obs-fold is rejected. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nX-A: one\r\n two\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nX-A: one\r\n\ttwo\r\n\r\n"), WS_E_HTTP_BAD);
    /* RFC 9112 §2.2: whitespace before the first field. */
    assert_int_equal(parse("GET / HTTP/1.1\r\n Host: a\r\n\r\n"), WS_E_HTTP_BAD);
}

/* --- fields ------------------------------------------------------------------------------------
 */

static void test_field_values(void **state)
{
    (void)state;
    assert_int_equal(parse("GET / HTTP/1.1\r\n"
                           "A:x\r\n"
                           "B:   spaced out  \t\r\n"
                           "C:\r\n"
                           "D: \t \r\n"
                           "E: tab\there\r\n"
                           "F: caf\xc3\xa9\r\n"
                           "G: \"q\" ; x=1\r\n"
                           "\r\n"),
                     0);
    assert_int_equal(req.nheaders, 7);
    assert_header("A", "x");
    assert_header("B", "spaced out");
    assert_header("C", "");
    assert_header("D", "");
    assert_header("E", "tab\there");
    assert_header("F", "caf\xc3\xa9");
    assert_header("G", "\"q\" ; x=1");
}

/* Every byte value at every place of a value long enough to be checked a word at a time: the
 * controls but HTAB, and DEL, are refused; everything else is kept. */
static void test_field_value_bytes(void **state)
{
    (void)state;
    static const char head[] = "GET / HTTP/1.1\r\nX: ";
    static const char tail[] = "\r\n\r\n";
    char buf[sizeof head + 24 + sizeof tail];
    for (int c = 0; c < 256; c++) {
        bool bad = (c < 0x20 && c != '\t') || c == 0x7f;
        for (size_t at = 1; at < 23; at++) { /* inside: not whitespace to strip */
            char *value = buf + sizeof head - 1;
            memcpy(buf, head, sizeof head - 1);
            memset(value, 'v', 24);
            value[at] = (char)c;
            memcpy(value + 24, tail, sizeof tail - 1);
            size_t n = sizeof head - 1 + 24 + sizeof tail - 1;
            assert_int_equal(parse_n(buf, n, MAX_HEAD), bad ? WS_E_HTTP_BAD : 0);
            if (!bad)
                assert_int_equal(req.headers[0].value.n, 24);
        }
    }
}

static void test_bad_fields(void **state)
{
    (void)state;
    /* RFC 9112 §5.1: no whitespace between name and colon. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\n: a\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost a\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHo(st: a\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHo\xc3\xa9st: a\r\n\r\n"), WS_E_HTTP_BAD);
    /* RFC 9110 §5.5: controls other than HTAB are invalid in values. */
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\x1f b\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse("GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n"), WS_E_HTTP_BAD);
    static const char nul[] = "GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n";
    assert_int_equal(parse_n(nul, sizeof nul - 1, MAX_HEAD), WS_E_HTTP_BAD);
}

static void test_case_insensitive_names(void **state)
{
    (void)state;
    assert_int_equal(parse(simple), 0);
    assert_header("host", "example.com");
    assert_header("HOST", "example.com");
    assert_header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    assert_null(ws_http_header(&req, "Hos"));
    assert_null(ws_http_header(&req, "Hostx"));
    assert_int_equal(ws_http_header_count(&req, "CONNECTION"), 1);
    assert_int_equal(ws_http_header_count(&req, "Origin"), 0);
}

static void test_repeated_headers(void **state)
{
    (void)state;
    assert_int_equal(parse("GET / HTTP/1.1\r\n"
                           "X-A: first\r\n"
                           "Other: o\r\n"
                           "x-a: second\r\n"
                           "X-A: third\r\n"
                           "\r\n"),
                     0);
    assert_int_equal(ws_http_header_count(&req, "x-a"), 3);
    assert_header("X-A", "first");
    assert_span(req.headers[2].value, "second");
    assert_span(req.headers[3].value, "third");
}

/* Every known field found where ws_http_header finds it, and counted alike. */
static void assert_fields_agree(void)
{
    for (int f = 0; f < WS_HTTP_FIELDS; f++) {
        const char *name = ws_http_field_name((enum ws_http_field)f);
        assert_ptr_equal(ws_http_field(&req, (enum ws_http_field)f), ws_http_header(&req, name));
        assert_int_equal(ws_http_field_count(&req, (enum ws_http_field)f),
                         ws_http_header_count(&req, name));
    }
}

static void test_known_fields(void **state)
{
    (void)state;
    assert_int_equal(parse(simple), 0);
    assert_fields_agree();
    assert_span(*ws_http_field(&req, WS_HTTP_SEC_WEBSOCKET_KEY), "dGhlIHNhbXBsZSBub25jZQ==");
    assert_int_equal(ws_http_field_count(&req, WS_HTTP_HOST), 1);
    assert_null(ws_http_field(&req, WS_HTTP_ORIGIN));

    /* any case; names of the same length that are not known; repeats */
    assert_int_equal(parse("GET / HTTP/1.1\r\n"
                           "hOST: a\r\n"
                           "Hist: x\r\n"
                           "Origim: x\r\n"
                           "CONNECTION: keep-alive\r\n"
                           "Connectiom: x\r\n"
                           "User-Agenz: x\r\n"
                           "user-agent: ua\r\n"
                           "sec-websocket-kez: x\r\n"
                           "Transfer-Encodinh: x\r\n"
                           "transfer-encoding: chunked\r\n"
                           "Content-Lengti: 1\r\n"
                           "X-Forwarded-Fox: x\r\n"
                           "x-forwarded-for: 10.0.0.1\r\n"
                           "Sec-WebSocket-Versiom: 1\r\n"
                           "Sec-WebSocket-Protocoi: x\r\n"
                           "Sec-WebSocket-Extensiont: x\r\n"
                           "Host: b\r\n"
                           "connection: Upgrade\r\n"
                           "Upgrades: websocket\r\n"
                           "\r\n"),
                     0);
    assert_fields_agree();
    assert_int_equal(ws_http_field_count(&req, WS_HTTP_HOST), 2);
    assert_span(*ws_http_field(&req, WS_HTTP_HOST), "a");
    assert_span(*ws_http_field(&req, WS_HTTP_USER_AGENT), "ua");
    assert_span(*ws_http_field(&req, WS_HTTP_TRANSFER_ENCODING), "chunked");
    assert_span(*ws_http_field(&req, WS_HTTP_X_FORWARDED_FOR), "10.0.0.1");
    assert_null(ws_http_field(&req, WS_HTTP_ORIGIN));
    assert_null(ws_http_field(&req, WS_HTTP_UPGRADE));
    assert_null(ws_http_field(&req, WS_HTTP_SEC_WEBSOCKET_KEY));
    assert_null(ws_http_field(&req, WS_HTTP_CONTENT_LENGTH));
    /* the list spans the repeated fields, and only them */
    assert_true(ws_http_field_has_token(&req, WS_HTTP_CONNECTION, "upgrade"));
    assert_true(ws_http_field_has_token(&req, WS_HTTP_CONNECTION, "Keep-Alive"));
    assert_false(ws_http_field_has_token(&req, WS_HTTP_CONNECTION, "x"));
    assert_false(ws_http_field_has_token(&req, WS_HTTP_UPGRADE, "websocket"));

    /* a later parse into the same request forgets the earlier fields */
    assert_int_equal(parse("GET / HTTP/1.1\r\nOrigin: o\r\n\r\n"), 0);
    assert_fields_agree();
    assert_null(ws_http_field(&req, WS_HTTP_HOST));
    assert_int_equal(ws_http_field_count(&req, WS_HTTP_CONNECTION), 0);
    assert_false(ws_http_field_has_token(&req, WS_HTTP_CONNECTION, "upgrade"));
    assert_span(*ws_http_field(&req, WS_HTTP_ORIGIN), "o");
}

static void test_too_many_headers(void **state)
{
    (void)state;
    char buf[4096];
    size_t n = (size_t)snprintf(buf, sizeof buf, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < WS_HTTP_MAX_HEADERS; i++)
        n += (size_t)snprintf(buf + n, sizeof buf - n, "X-%d: %d\r\n", i, i);
    size_t fields_end = n;
    n += (size_t)snprintf(buf + n, sizeof buf - n, "\r\n");
    assert_int_equal(parse_n(buf, n, MAX_HEAD), 0);
    assert_int_equal(req.nheaders, WS_HTTP_MAX_HEADERS);

    n = fields_end +
        (size_t)snprintf(buf + fields_end, sizeof buf - fields_end, "One: more\r\n\r\n");
    assert_int_equal(parse_n(buf, n, MAX_HEAD), WS_E_HTTP_TOO_LARGE);
    assert_int_equal(ws_err_http_status(WS_E_HTTP_TOO_LARGE), 431);
}

/* --- limits --------------------------------------------------------------------------------- */

static void test_size_cap(void **state)
{
    (void)state;
    size_t len = strlen(simple);
    /* Exactly at the limit is fine, with or without bytes after the head. */
    assert_int_equal(parse_n(simple, len, len), 0);
    assert_int_equal(req.head_len, len);
    char more[1024];
    memcpy(more, simple, len);
    memcpy(more + len, "\x81\x80xxxx", 6);
    assert_int_equal(parse_n(more, len + 6, len), 0);
    assert_int_equal(req.head_len, len);
    /* One byte over. */
    assert_int_equal(parse_n(simple, len, len - 1), WS_E_HTTP_TOO_LARGE);
    assert_int_equal(parse_n(more, len + 6, len - 1), WS_E_HTTP_TOO_LARGE);
    /* No terminator within max bytes. */
    assert_int_equal(parse_n(simple, len - 1, len - 1), WS_E_HTTP_TOO_LARGE);
    assert_int_equal(parse_n(simple, len - 1, len), WS_E_AGAIN);
    assert_int_equal(parse_n("GET / HTTP/1.1\r\n", 16, 16), WS_E_HTTP_TOO_LARGE);
    assert_int_equal(parse_n("GET / HTTP/1.1\r\n", 16, 17), WS_E_AGAIN);
}

static void test_size_cap_incremental(void **state)
{
    (void)state;
    /* A peer trickling an endless header is stopped at the limit, not before. */
    enum { MAX = 100 };
    char buf[MAX + 10];
    memcpy(buf, "GET / HTTP/1.1\r\nX: ", 19);
    memset(buf + 19, 'a', sizeof buf - 19);
    size_t scanned = 0;
    for (size_t n = 1; n < MAX; n++)
        assert_int_equal(ws_http_parse(buf, n, MAX, &scanned, &req), WS_E_AGAIN);
    assert_int_equal(ws_http_parse(buf, MAX, MAX, &scanned, &req), WS_E_HTTP_TOO_LARGE);
    assert_int_equal(ws_http_parse(buf, MAX + 10, MAX, &scanned, &req), WS_E_HTTP_TOO_LARGE);
}

/* --- incremental feeding -----------------------------------------------------------------------
 */

/* Parses s fed as the given prefixes (each copied into an exact-size heap block so a read past
 * the end shows under ASan) and checks the outcome matches the one-shot parse. */
static void check_same(const struct ws_http_request *a, const char *abase,
                       const struct ws_http_request *b, const char *bbase)
{
    assert_int_equal(a->head_len, b->head_len);
    assert_int_equal(a->version_minor, b->version_minor);
    assert_int_equal(a->method.p - abase, b->method.p - bbase);
    assert_int_equal(a->method.n, b->method.n);
    assert_int_equal(a->target.p - abase, b->target.p - bbase);
    assert_int_equal(a->target.n, b->target.n);
    assert_int_equal(a->nheaders, b->nheaders);
    for (size_t i = 0; i < a->nheaders; i++) {
        assert_int_equal(a->headers[i].name.p - abase, b->headers[i].name.p - bbase);
        assert_int_equal(a->headers[i].name.n, b->headers[i].name.n);
        assert_int_equal(a->headers[i].value.p - abase, b->headers[i].value.p - bbase);
        assert_int_equal(a->headers[i].value.n, b->headers[i].value.n);
    }
}

static int parse_prefix(const char *s, size_t n, size_t *scanned, struct ws_http_request *out,
                        char **copy)
{
    *copy = malloc(n ? n : 1);
    assert_non_null(*copy);
    memcpy(*copy, s, n);
    return ws_http_parse(*copy, n, MAX_HEAD, scanned, out);
}

static const char *const samples[] = {
    simple,
    "GET / HTTP/1.1\r\n\r\n",
    "GET / HTTP/1.1\r\nA: \r\n\r\n",
    "GET / HTTP/1.0\r\nHost: x\r\nX: a\r\n\r\n\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58",
    "GET /a HTTP/1.1\r\nX: 1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
};

static void test_split_every_position(void **state)
{
    (void)state;
    static struct ws_http_request one, split;
    for (size_t k = 0; k < sizeof samples / sizeof samples[0]; k++) {
        const char *s = samples[k];
        size_t len = strlen(s);
        size_t scanned = 0;
        assert_int_equal(ws_http_parse(s, len, MAX_HEAD, &scanned, &one), 0);
        for (size_t cut = 0; cut <= len; cut++) {
            char *a, *b;
            scanned = 0;
            int rc = parse_prefix(s, cut, &scanned, &split, &a);
            if (cut < one.head_len) {
                assert_int_equal(rc, WS_E_AGAIN);
                assert_int_equal(scanned, cut);
            } else {
                assert_int_equal(rc, 0);
            }
            rc = parse_prefix(s, len, &scanned, &split, &b);
            assert_int_equal(rc, 0);
            check_same(&split, b, &one, s);
            free(a);
            free(b);
        }
    }
}

static void test_byte_by_byte(void **state)
{
    (void)state;
    static struct ws_http_request one, step;
    for (size_t k = 0; k < sizeof samples / sizeof samples[0]; k++) {
        const char *s = samples[k];
        size_t len = strlen(s);
        size_t scanned = 0;
        assert_int_equal(ws_http_parse(s, len, MAX_HEAD, &scanned, &one), 0);
        scanned = 0;
        size_t n;
        for (n = 1; n <= len; n++) {
            char *copy;
            int rc = parse_prefix(s, n, &scanned, &step, &copy);
            if (rc == 0) {
                check_same(&step, copy, &one, s);
                free(copy);
                break;
            }
            free(copy);
            assert_int_equal(rc, WS_E_AGAIN);
            /* Only the last 3 bytes are looked at again next time. */
            assert_int_equal(scanned, n);
        }
        assert_int_equal(n, one.head_len);
    }
}

static void test_bad_bytes_split(void **state)
{
    (void)state;
    /* Errors found early stay errors however the bytes arrive. */
    static const char *const bad[] = {
        "GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\rX: b\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\r\n",
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        size_t len = strlen(bad[k]);
        size_t scanned = 0;
        int rc = WS_E_AGAIN;
        for (size_t n = 1; n <= len && rc == WS_E_AGAIN; n++)
            rc = ws_http_parse(bad[k], n, MAX_HEAD, &scanned, &req);
        assert_int_equal(rc, WS_E_HTTP_BAD);
        /* And calling again gives the same answer. */
        assert_int_equal(ws_http_parse(bad[k], len, MAX_HEAD, &scanned, &req), WS_E_HTTP_BAD);
    }
    /* A NUL in a later line is refused in the call that brings it, whatever came before. */
    static const char nul[] = "GET / HTTP/1.1\r\nHost: a\r\nX: \0b\r\n\r\n";
    size_t at = strlen(nul); /* the NUL's offset */
    size_t scanned = 0;
    for (size_t n = 1; n <= at; n++)
        assert_int_equal(ws_http_parse(nul, n, MAX_HEAD, &scanned, &req), WS_E_AGAIN);
    assert_int_equal(ws_http_parse(nul, at + 1, MAX_HEAD, &scanned, &req), WS_E_HTTP_BAD);
}

static void test_pipelined(void **state)
{
    (void)state;
    /* RFC 6455 §5.7 masked "Hello" right after the head: untouched, head_len marks it. */
    static const char frame[] = "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    char buf[1024];
    size_t hl = strlen(simple);
    memcpy(buf, simple, hl);
    memcpy(buf + hl, frame, sizeof frame - 1);
    char copy[1024];
    memcpy(copy, buf, sizeof buf);
    assert_int_equal(parse_n(buf, hl + sizeof frame - 1, MAX_HEAD), 0);
    assert_int_equal(req.head_len, hl);
    assert_memory_equal(buf, copy, sizeof buf);
    assert_memory_equal(buf + req.head_len, frame, sizeof frame - 1);

    /* A second head after the first: only the first is parsed. */
    assert_int_equal(parse("GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\nX: y\r\n\r\n"), 0);
    assert_span(req.target, "/a");
    assert_int_equal(req.head_len, 19);
    assert_int_equal(req.nheaders, 0);

    /* Garbage after the head is not ours to judge. */
    assert_int_equal(parse("GET / HTTP/1.1\r\n\r\n\n\0\r\x01"), 0);
}

static void test_repeat_call_after_success(void **state)
{
    (void)state;
    static const char two[] = "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
    size_t scanned = 0;
    assert_int_equal(ws_http_parse(two, sizeof two - 1, MAX_HEAD, &scanned, &req), 0);
    assert_int_equal(ws_http_parse(two, sizeof two - 1, MAX_HEAD, &scanned, &req), 0);
    assert_span(req.target, "/a");
}

/* --- lists and helpers ------------------------------------------------------------------------ */

static void test_next_token(void **state)
{
    (void)state;
    static const char s[] = " , a ,, b c ,\t,d,  ";
    struct ws_span list = {s, sizeof s - 1};
    struct ws_span t;
    assert_true(ws_http_next_token(&list, &t));
    assert_span(t, "a");
    assert_true(ws_http_next_token(&list, &t));
    assert_span(t, "b c");
    assert_true(ws_http_next_token(&list, &t));
    assert_span(t, "d");
    assert_false(ws_http_next_token(&list, &t));
    assert_false(ws_http_next_token(&list, &t));

    struct ws_span empty = {"", 0};
    assert_false(ws_http_next_token(&empty, &t));
    struct ws_span commas = {" ,, ,", 5};
    assert_false(ws_http_next_token(&commas, &t));
    struct ws_span one = {"x", 1};
    assert_true(ws_http_next_token(&one, &t));
    assert_span(t, "x");
    assert_int_equal(one.n, 0);
}

static void test_has_token(void **state)
{
    (void)state;
    assert_int_equal(parse("GET / HTTP/1.1\r\n"
                           "Connection: keep-alive, Upgrade\r\n"
                           "Upgrade: h2c\r\n"
                           "upgrade: ,WebSocket ,\r\n"
                           "X-List: , ,\r\n"
                           "X-Near: upgrades, upgrad, up grade\r\n"
                           "\r\n"),
                     0);
    assert_true(ws_http_header_has_token(&req, "connection", "upgrade"));
    assert_true(ws_http_header_has_token(&req, "Connection", "KEEP-ALIVE"));
    assert_false(ws_http_header_has_token(&req, "Connection", "close"));
    /* Repeated fields form one list. */
    assert_true(ws_http_header_has_token(&req, "Upgrade", "websocket"));
    assert_true(ws_http_header_has_token(&req, "Upgrade", "h2c"));
    assert_false(ws_http_header_has_token(&req, "X-List", ""));
    assert_false(ws_http_header_has_token(&req, "X-Near", "upgrade"));
    assert_false(ws_http_header_has_token(&req, "Missing", "upgrade"));
}

static void test_span_ieq(void **state)
{
    (void)state;
    struct ws_span s = {"WebSocket!", 9};
    assert_true(ws_span_ieq(s, "websocket"));
    assert_true(ws_span_ieq(s, "WEBSOCKET"));
    assert_false(ws_span_ieq(s, "websocke"));
    assert_false(ws_span_ieq(s, "websocket!"));
    assert_true(ws_span_ieq((struct ws_span){"", 0}, ""));
    /* Only ASCII letters fold: '@' (0x40) is not '`' (0x60). */
    assert_false(ws_span_ieq((struct ws_span){"@", 1}, "`"));
    assert_false(ws_span_ieq((struct ws_span){"[", 1}, "{"));
}

static void test_tchar(void **state)
{
    (void)state;
    const char *yes = "!#$%&'*+-.^_`|~09azAZ";
    for (const char *p = yes; *p; p++)
        assert_true(ws_http_is_tchar((unsigned char)*p));
    const char *no = " \t\"(),/:;<=>?@[\\]{}";
    for (const char *p = no; *p; p++)
        assert_false(ws_http_is_tchar((unsigned char)*p));
    assert_false(ws_http_is_tchar(0));
    assert_false(ws_http_is_tchar(0x7f));
    assert_false(ws_http_is_tchar(0x80));
    assert_false(ws_http_is_tchar(0xff));
}

static void test_reason(void **state)
{
    (void)state;
    static const int statuses[] = {100, 101, 200, 204, 206, 301, 302, 304, 400, 401, 403, 404,
                                   405, 408, 413, 414, 426, 429, 431, 500, 501, 503, 505};
    for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
        assert_string_not_equal(ws_http_reason(statuses[i]), "Unknown");
    assert_string_equal(ws_http_reason(101), "Switching Protocols");
    assert_string_equal(ws_http_reason(400), "Bad Request");
    assert_string_equal(ws_http_reason(426), "Upgrade Required");
    assert_string_equal(ws_http_reason(431), "Request Header Fields Too Large");
    assert_string_equal(ws_http_reason(505), "HTTP Version Not Supported");
    assert_string_equal(ws_http_reason(299), "Unknown");
    assert_string_equal(ws_http_reason(-1), "Unknown");
}

static void test_error_statuses(void **state)
{
    (void)state;
    assert_int_equal(ws_err_http_status(WS_E_HTTP_BAD), 400);
    assert_int_equal(ws_err_http_status(WS_E_HTTP_VERSION), 505);
    assert_int_equal(ws_err_http_status(WS_E_HTTP_TOO_LARGE), 431);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_simple),
        cmocka_unit_test(test_no_fields),
        cmocka_unit_test(test_http10),
        cmocka_unit_test(test_other_methods_and_targets),
        cmocka_unit_test(test_bad_version),
        cmocka_unit_test(test_bad_request_line),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_garbage),
        cmocka_unit_test(test_bare_lf),
        cmocka_unit_test(test_bare_cr),
        cmocka_unit_test(test_obs_fold),
        cmocka_unit_test(test_field_values),
        cmocka_unit_test(test_field_value_bytes),
        cmocka_unit_test(test_bad_fields),
        cmocka_unit_test(test_case_insensitive_names),
        cmocka_unit_test(test_repeated_headers),
        cmocka_unit_test(test_known_fields),
        cmocka_unit_test(test_too_many_headers),
        cmocka_unit_test(test_size_cap),
        cmocka_unit_test(test_size_cap_incremental),
        cmocka_unit_test(test_split_every_position),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_bad_bytes_split),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_repeat_call_after_success),
        cmocka_unit_test(test_next_token),
        cmocka_unit_test(test_has_token),
        cmocka_unit_test(test_span_ieq),
        cmocka_unit_test(test_tchar),
        cmocka_unit_test(test_reason),
        cmocka_unit_test(test_error_statuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
