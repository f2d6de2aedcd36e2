/* Unit tests for the client role in the pure layer: the key and the upgrade request
 * (handshake_client.c, parsed back by the server side's own checks), every refusal of the
 * server's answer, the permessage-deflate parameters mirrored for our side, the response-head
 * parser (ws_http_parse_response) and the session's client role (masked server frames). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/err.h"
#include "ws/frame.h"
#include "ws/handshake.h"
#include "ws/handshake_client.h"
#include "ws/http.h"
#include "ws/session.h"

#include <stdio.h>
#include <string.h>

#define RFC_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static char text[8192];
static struct ws_http_request resp;

static void test_key_from_nonce(void **state)
{
    (void)state;
    /* RFC 6455 §4.1: the nonce "the sample nonce" gives the example key */
    char key[WS_HANDSHAKE_KEY_LEN + 1];
    ws_handshake_client_key((const uint8_t *)"the sample nonce", key);
    assert_string_equal(key, RFC_KEY);
}

static size_t build(const struct ws_handshake_client_request *r)
{
    return ws_handshake_client_request(text, sizeof text, r);
}

static void test_request_passes_the_server_checks(void **state)
{
    (void)state;
    const char *protocols[] = {"chat.v2", "chat.v1"};
    const char *headers[] = {"Origin: https://example.com", "Authorization: Bearer x y"};
    struct ws_handshake_client_request r = {.host = "example.com",
                                            .port = 8080,
                                            .target = "/feed?x=1",
                                            .key = RFC_KEY,
                                            .protocols = protocols,
                                            .nprotocols = 2,
                                            .deflate = true,
                                            .headers = headers,
                                            .nheaders = 2};
    size_t n = build(&r);
    assert_true(n > 0);
    struct ws_http_request req;
    size_t scanned = 0;
    assert_int_equal(ws_http_parse(text, n, sizeof text, &scanned, &req), 0);
    assert_int_equal(req.head_len, n);
    struct ws_handshake hs;
    assert_int_equal(ws_handshake_check(&req, &hs), 0);
    assert_string_equal(hs.accept, RFC_ACCEPT);
    assert_true(ws_span_ieq(req.target, "/feed?x=1"));
    assert_true(ws_span_ieq(*ws_http_header(&req, "Host"), "example.com:8080"));
    assert_true(ws_span_ieq(*ws_http_header(&req, "Sec-WebSocket-Protocol"), "chat.v2, chat.v1"));
    assert_true(ws_span_ieq(*ws_http_header(&req, "Origin"), "https://example.com"));
    assert_true(ws_span_ieq(*ws_http_header(&req, "Authorization"), "Bearer x y"));
    /* the offer parses as one permessage-deflate offer letting the server pick our window */
    assert_int_equal(hs.noffers, 1);
    assert_int_equal(hs.offers[0].client_max_window_bits, -1);
}

static void test_request_default_port_and_splitting(void **state)
{
    (void)state;
    struct ws_handshake_client_request r = {
        .host = "h", .port = 443, .tls = true, .target = "/", .key = RFC_KEY};
    size_t n = build(&r);
    assert_non_null(memmem(text, n, "\r\nHost: h\r\n", 11));
    r.tls = false;
    n = build(&r);
    assert_non_null(memmem(text, n, "\r\nHost: h:443\r\n", 15));
    /* anything that would split the request or a field is refused */
    r.target = "/a b";
    assert_int_equal(build(&r), 0);
    r.target = "/a\r\nX: y";
    assert_int_equal(build(&r), 0);
    r.target = "no-slash";
    assert_int_equal(build(&r), 0);
    r.target = "/";
    const char *bad_header[] = {"X: a\r\nY: b"};
    r.headers = bad_header;
    r.nheaders = 1;
    assert_int_equal(build(&r), 0);
    r.nheaders = 0;
    const char *bad_protocol[] = {"a b"};
    r.protocols = bad_protocol;
    r.nprotocols = 1;
    assert_int_equal(build(&r), 0);
    r.nprotocols = 0;
    assert_int_equal(ws_handshake_client_request(text, 40, &r), 0); /* too small */
}

/* Parses a response head made of the status line and fields. */
static void answer(const char *status_line, const char *fields)
{
    int n = snprintf(text, sizeof text, "%s\r\n%s\r\n", status_line, fields);
    size_t scanned = 0;
    assert_int_equal(ws_http_parse_response(text, (size_t)n, sizeof text, &scanned, &resp), 0);
}

#define OK101 "HTTP/1.1 101 Switching Protocols"
#define GOOD "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " RFC_ACCEPT "\r\n"

static struct ws_handshake_client_result hr;

static int check(const char *const *protocols, size_t n, bool deflate)
{
    return ws_handshake_client_check(&resp, RFC_KEY, protocols, n, deflate, &hr);
}

static void expect_refused(const char *const *protocols, size_t n, bool deflate, const char *why)
{
    assert_int_equal(check(protocols, n, deflate), WS_E_HANDSHAKE);
    assert_non_null(hr.reason);
    assert_non_null(strstr(hr.reason, why));
}

static void test_accepts_a_good_answer(void **state)
{
    (void)state;
    answer(OK101, GOOD);
    assert_int_equal(resp.status, 101);
    assert_int_equal(check(NULL, 0, false), 0);
    assert_int_equal(hr.protocol.n, 0);
    assert_false(hr.deflate);
    /* case-insensitive names and tokens, lists (RFC 6455 §4.1 items 2-3) */
    answer("HTTP/1.1 101 OK", "UPGRADE: WebSocket\r\nconnection: keep-alive, upgrade\r\n"
                              "sec-websocket-accept: " RFC_ACCEPT "\r\n");
    assert_int_equal(check(NULL, 0, false), 0);
}

static void test_refuses_bad_answers(void **state)
{
    (void)state;
    answer("HTTP/1.1 200 OK", GOOD);
    expect_refused(NULL, 0, false, "101");
    answer(OK101, "Connection: Upgrade\r\nSec-WebSocket-Accept: " RFC_ACCEPT "\r\n");
    expect_refused(NULL, 0, false, "Upgrade");
    answer(OK101,
           "Upgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " RFC_ACCEPT "\r\n");
    expect_refused(NULL, 0, false, "Upgrade");
    answer(OK101, "Upgrade: websocket\r\nSec-WebSocket-Accept: " RFC_ACCEPT "\r\n");
    expect_refused(NULL, 0, false, "Connection");
    answer(OK101, "Upgrade: websocket\r\nConnection: Upgrade\r\n");
    expect_refused(NULL, 0, false, "Sec-WebSocket-Accept");
    answer(OK101, "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOO=\r\n");
    expect_refused(NULL, 0, false, "does not match");
    answer(OK101, GOOD "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n");
    expect_refused(NULL, 0, false, "single");
}

static void test_subprotocol_answers(void **state)
{
    (void)state;
    const char *offered[] = {"a", "b"};
    answer(OK101, GOOD "Sec-WebSocket-Protocol: b\r\n");
    assert_int_equal(check(offered, 2, false), 0);
    assert_int_equal(hr.protocol.n, 1);
    assert_memory_equal(hr.protocol.p, "b", 1);
    /* RFC 6455 §4.1 item 6: only one the client offered, and only one */
    expect_refused(offered, 1, false, "did not offer");
    expect_refused(NULL, 0, false, "did not offer");
    answer(OK101, GOOD "Sec-WebSocket-Protocol: a, b\r\n");
    expect_refused(offered, 2, false, "more than one");
    answer(OK101, GOOD "Sec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: a\r\n");
    expect_refused(offered, 2, false, "more than one");
    /* none picked: fine */
    answer(OK101, GOOD);
    assert_int_equal(check(offered, 2, false), 0);
    assert_int_equal(hr.protocol.n, 0);
}

static void test_extension_answers(void **state)
{
    (void)state;
    answer(OK101, GOOD "Sec-WebSocket-Extensions: permessage-deflate\r\n");
    expect_refused(NULL, 0, false, "did not offer");
    assert_int_equal(check(NULL, 0, true), 0);
    assert_true(hr.deflate);
    assert_int_equal(hr.params.server_max_window_bits, 15);
    assert_int_equal(hr.params.client_max_window_bits, 15);
    assert_false(hr.params.server_no_context_takeover);
    assert_false(hr.params.client_no_context_takeover);
    /* the server's parameters mirrored: its window and takeover are our inflater's */
    answer(OK101, GOOD "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=10; "
                       "client_no_context_takeover; client_max_window_bits=12; "
                       "server_no_context_takeover\r\n");
    assert_int_equal(check(NULL, 0, true), 0);
    assert_int_equal(hr.params.server_max_window_bits, 12);
    assert_true(hr.params.server_no_context_takeover);
    assert_int_equal(hr.params.client_max_window_bits, 10);
    assert_true(hr.params.client_no_context_takeover);
    /* a window of 8 for us: zlib cannot, so we never compress */
    answer(OK101,
           GOOD "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=8\r\n");
    assert_int_equal(check(NULL, 0, true), 0);
    assert_int_equal(hr.params.compress_min_size, SIZE_MAX);
    /* RFC 7692 §7.1.2.2: a value is required in the answer */
    answer(OK101, GOOD "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    expect_refused(NULL, 0, true, "without a value");
    answer(OK101, GOOD "Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate\r\n");
    expect_refused(NULL, 0, true, "more than once");
    answer(OK101, GOOD "Sec-WebSocket-Extensions: x-webkit-deflate-frame\r\n");
    expect_refused(NULL, 0, true, "unknown extension");
    answer(OK101,
           GOOD "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7\r\n");
    expect_refused(NULL, 0, true, "invalid parameters");
}

static int parse_resp(const char *s)
{
    size_t scanned = 0;
    return ws_http_parse_response(s, strlen(s), 1024, &scanned, &resp);
}

static void test_response_parser(void **state)
{
    (void)state;
    assert_int_equal(parse_resp("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"), 0);
    assert_int_equal(resp.status, 403);
    assert_int_equal(resp.version_minor, 1);
    assert_int_equal(resp.nheaders, 1);
    assert_int_equal(resp.head_len, strlen("HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\n"));
    assert_int_equal(parse_resp("HTTP/1.0 200\r\n\r\n"), 0); /* no reason phrase */
    assert_int_equal(resp.status, 200);
    assert_int_equal(parse_resp("HTTP/1.1 101 Switching"), WS_E_AGAIN);
    assert_int_equal(parse_resp("HTTP/2 200 OK\r\n\r\n"), WS_E_HTTP_VERSION);
    assert_int_equal(parse_resp("HTTP/1.1 20 OK\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse_resp("HTTP/1.1 2000 OK\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse_resp("HTTP/1.1 099 Low\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse_resp("GET / HTTP/1.1\r\n\r\n"), WS_E_HTTP_BAD);
    assert_int_equal(parse_resp("HTTP/1.1 101 OK\r\nBad Name: x\r\n\r\n"), WS_E_HTTP_BAD);
    /* a request still parses as a request, and has no status */
    size_t scanned = 0;
    const char *req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_int_equal(ws_http_parse(req, strlen(req), 1024, &scanned, &resp), 0);
    assert_int_equal(resp.status, 0);
}

static void test_session_client_role(void **state)
{
    (void)state;
    struct ws_session s;
    struct ws_session_event ev;
    size_t used;
    /* an unmasked server frame is what the client expects */
    uint8_t frame[16] = {0x81, 0x02, 'h', 'i'};
    ws_session_init(&s, 1024);
    ws_session_set_client(&s);
    assert_int_equal(ws_session_feed(&s, frame, 4, &used, &ev), 0);
    assert_int_equal(ev.type, WS_SESSION_MESSAGE);
    assert_int_equal(ev.len, 2);
    assert_memory_equal(ev.data, "hi", 2);
    ws_session_reset(&s);
    /* RFC 6455 §5.1: a masked server frame fails the connection with 1002 */
    uint8_t masked[] = {0x81, 0x82, 1, 2, 3, 4, 'h' ^ 1, 'i' ^ 2};
    ws_session_init(&s, 1024);
    ws_session_set_client(&s);
    assert_int_equal(ws_session_feed(&s, masked, sizeof masked, &used, &ev), WS_E_MASKED);
    assert_int_equal(ws_err_close_code(WS_E_MASKED), 1002);
    ws_session_reset(&s);
    /* and the server role still refuses the unmasked one */
    ws_session_init(&s, 1024);
    assert_int_equal(ws_session_feed(&s, frame, 4, &used, &ev), WS_E_UNMASKED);
    ws_session_reset(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_from_nonce),
        cmocka_unit_test(test_request_passes_the_server_checks),
        cmocka_unit_test(test_request_default_port_and_splitting),
        cmocka_unit_test(test_accepts_a_good_answer),
        cmocka_unit_test(test_refuses_bad_answers),
        cmocka_unit_test(test_subprotocol_answers),
        cmocka_unit_test(test_extension_answers),
        cmocka_unit_test(test_response_parser),
        cmocka_unit_test(test_session_client_role),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
