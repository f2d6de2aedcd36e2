/* Unit tests for the opening handshake (src/handshake.c): every acceptance rule and rejection,
 * the RFC 6455 accept vector, subprotocol selection, permessage-deflate offers and the bytes of
 * the 101 and error responses (parsed back). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/err.h"
#include "ws/handshake.h"
#include "ws/http.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RFC_KEY "dGhlIHNhbXBsZSBub25jZQ=="
#define RFC_ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

static char text[8192];
static struct ws_http_request req;
static struct ws_handshake hs;

/* Parses the request line "GET / HTTP/1.1" plus the given CRLF-terminated fields. */
static void request_with(const char *line, const char *fields)
{
    int n = snprintf(text, sizeof text, "%s\r\n%s\r\n", line, fields);
    assert_true(n > 0 && (size_t)n < sizeof text);
    size_t scanned = 0;
    assert_int_equal(ws_http_parse(text, (size_t)n, sizeof text, &scanned, &req), 0);
}

static void request(const char *fields)
{
    request_with("GET /chat HTTP/1.1", fields);
}

#define HOST "Host: server.example.com\r\n"
#define UPGRADE "Upgrade: websocket\r\n"
#define CONNECTION "Connection: Upgrade\r\n"
#define VERSION "Sec-WebSocket-Version: 13\r\n"
#define KEY "Sec-WebSocket-Key: " RFC_KEY "\r\n"
#define GOOD HOST UPGRADE CONNECTION KEY VERSION

static void expect_ok(void)
{
    assert_int_equal(ws_handshake_check(&req, &hs), 0);
    assert_int_equal(hs.status, 101);
    assert_null(hs.reason);
}

static void expect_reject(int err, int status, const char *reason)
{
    assert_int_equal(ws_handshake_check(&req, &hs), err);
    assert_int_equal(hs.status, status);
    assert_int_equal(ws_err_http_status(err), status);
    assert_non_null(hs.reason);
    assert_string_equal(hs.reason, reason);
    assert_null(strchr(hs.reason, '\n'));
}

/* --- acceptance --------------------------------------------------------------------------- */

static void test_rfc_request(void **state)
{
    (void)state;
    /* RFC 6455 §1.3 / §4.1 example. */
    request(HOST UPGRADE CONNECTION KEY "Origin: http://example.com\r\n"
                                        "Sec-WebSocket-Protocol: chat, superchat\r\n" VERSION);
    expect_ok();
    assert_string_equal(hs.accept, RFC_ACCEPT);
    assert_int_equal(hs.key.n, 24);
    assert_memory_equal(hs.key.p, RFC_KEY, 24);
    assert_int_equal(hs.noffers, 0);
}

static void test_accept_key_vector(void **state)
{
    (void)state;
    char out[WS_HANDSHAKE_ACCEPT_LEN + 1];
    memset(out, 'x', sizeof out);
    ws_handshake_accept_key(RFC_KEY, strlen(RFC_KEY), out);
    assert_string_equal(out, RFC_ACCEPT);
    assert_int_equal(strlen(out), WS_HANDSHAKE_ACCEPT_LEN);
}

static void test_accept_key_long(void **state)
{
    (void)state;
    /* Longer than any valid key: still base64(SHA-1(key + GUID)). */
    char key[300];
    memset(key, 'k', sizeof key);
    char joined[sizeof key + 36];
    memcpy(joined, key, sizeof key);
    memcpy(joined + sizeof key, "258EAFA5-E914-47DA-95CA-C5AB0DC85B11", 36);
    unsigned char digest[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)joined, sizeof joined, digest);
    char want[WS_HANDSHAKE_ACCEPT_LEN + 1];
    EVP_EncodeBlock((unsigned char *)want, digest, sizeof digest);

    char out[WS_HANDSHAKE_ACCEPT_LEN + 1];
    ws_handshake_accept_key(key, sizeof key, out);
    assert_string_equal(out, want);
    ws_handshake_accept_key(key, 128, out);
    assert_string_not_equal(out, want);
    ws_handshake_accept_key(key, 0, out);
    assert_int_equal(strlen(out), WS_HANDSHAKE_ACCEPT_LEN);
}

static void test_case_and_lists(void **state)
{
    (void)state;
    /* RFC 6455 §4.2.1: Upgrade and Connection are case-insensitive, Connection is a list. */
    request(HOST "upgrade: WebSocket\r\n"
                 "CONNECTION: keep-alive, UPGRADE\r\n"
                 "sec-websocket-key: " RFC_KEY "\r\n"
                 "SEC-WEBSOCKET-VERSION: 13\r\n");
    expect_ok();
    assert_string_equal(hs.accept, RFC_ACCEPT);

    request(HOST "Upgrade: h2c, websocket\r\n"
                 "Connection: keep-alive\r\n"
                 "Connection: Upgrade\r\n" KEY VERSION);
    expect_ok();
}

static void test_target_with_query(void **state)
{
    (void)state;
    request_with("GET /x?y=1 HTTP/1.1", GOOD);
    expect_ok();
}

static void test_same_key_twice(void **state)
{
    (void)state;
    /* SPEC §6: a repeated key across connections is not refused. */
    request(GOOD);
    expect_ok();
    request(GOOD);
    expect_ok();
    assert_string_equal(hs.accept, RFC_ACCEPT);
}

static void test_is_upgrade(void **state)
{
    (void)state;
    request(GOOD);
    assert_true(ws_handshake_is_upgrade(&req));
    request(HOST "Upgrade: WEBSOCKET\r\n");
    assert_true(ws_handshake_is_upgrade(&req));
    request(HOST);
    assert_false(ws_handshake_is_upgrade(&req));
    request(HOST "Upgrade: h2c\r\nConnection: Upgrade\r\n");
    assert_false(ws_handshake_is_upgrade(&req));
}

/* --- rejections, in the order they are checked ------------------------------------------------ */

static void test_method(void **state)
{
    (void)state;
    request_with("POST /chat HTTP/1.1", GOOD);
    expect_reject(WS_E_HTTP_METHOD, 405, "method not allowed");
    /* RFC 9110 §9.1: methods are case-sensitive. */
    request_with("get /chat HTTP/1.1", GOOD);
    expect_reject(WS_E_HTTP_METHOD, 405, "method not allowed");
    request_with("GETS /chat HTTP/1.1", GOOD);
    expect_reject(WS_E_HTTP_METHOD, 405, "method not allowed");
    /* The method is checked first. */
    request_with("PUT /chat HTTP/1.0", "");
    expect_reject(WS_E_HTTP_METHOD, 405, "method not allowed");
}

static void test_http_version(void **state)
{
    (void)state;
    request_with("GET /chat HTTP/1.0", GOOD);
    expect_reject(WS_E_HANDSHAKE, 400, "HTTP/1.1 required");
}

static void test_host(void **state)
{
    (void)state;
    request(UPGRADE CONNECTION KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "missing Host header");
    request(HOST "host: other.example.com\r\n" UPGRADE CONNECTION KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "duplicate Host header");
}

static void test_upgrade(void **state)
{
    (void)state;
    request(HOST CONNECTION KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "missing Upgrade header");
    request(HOST "Upgrade: h2c\r\n" CONNECTION KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "Upgrade header must contain websocket");
    request(HOST "Upgrade: websockets\r\n" CONNECTION KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "Upgrade header must contain websocket");
    request(HOST "Upgrade:\r\n" CONNECTION KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "Upgrade header must contain websocket");
}

static void test_connection(void **state)
{
    (void)state;
    request(HOST UPGRADE KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "missing Connection header");
    request(HOST UPGRADE "Connection: keep-alive\r\n" KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "Connection header must contain upgrade");
    request(HOST UPGRADE "Connection: keep-alive upgrade\r\n" KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "Connection header must contain upgrade");
}

static void test_ws_version(void **state)
{
    (void)state;
    request(HOST UPGRADE CONNECTION KEY);
    expect_reject(WS_E_HANDSHAKE, 400, "missing Sec-WebSocket-Version header");
    /* RFC 6455 §4.4: another version gets 426. */
    static const char *const others[] = {"8", "7", "14", "013", "13, 8", "", "thirteen", "1 3"};
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
        char fields[512];
        snprintf(fields, sizeof fields, HOST UPGRADE CONNECTION KEY "Sec-WebSocket-Version: %s\r\n",
                 others[i]);
        request(fields);
        expect_reject(WS_E_WS_VERSION, 426, "unsupported Sec-WebSocket-Version (only 13)");
    }
    request(HOST UPGRADE CONNECTION KEY VERSION VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "duplicate Sec-WebSocket-Version header");
    /* Whitespace around the value is not part of it (RFC 9112 §5). */
    request(HOST UPGRADE CONNECTION KEY "Sec-WebSocket-Version:   13 \r\n");
    expect_ok();
}

static void test_key_missing_and_duplicate(void **state)
{
    (void)state;
    request(HOST UPGRADE CONNECTION VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "missing Sec-WebSocket-Key header");
    /* RFC 6455 §11.3.1: the key appears once. */
    request(HOST UPGRADE CONNECTION KEY KEY VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "duplicate Sec-WebSocket-Key header");
    request(HOST UPGRADE CONNECTION KEY "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\n" VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "duplicate Sec-WebSocket-Key header");
}

static void test_key_shape(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "AAAAAAAAAAAAAAAAAAAA",         /* 15 bytes */
        "AAAAAAAAAAAAAAAAAAAAAAA=",     /* 17 bytes */
        "AAAAAAAAAAAAAAAAAAAAAAAA",     /* 18 bytes */
        "AAAAAAAAAAAAAAAAAAAAAA",       /* 16 bytes, no padding */
        "AAAAAAAAAAAAAAAAAAAAAA=",      /* half the padding */
        "AAAAAAAAAAAAAAAAAAAAAA===",    /* too much padding */
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAA", /* 21 bytes */
        "AAAAAAAAAAAAAAAAAAAAA!==",     /* not base64 */
        "AAAAAAAAAAAAAAAAAAAA-_==",     /* base64url, not base64 */
        "AAAAAAAAAA AAAAAAAAAAA==",     /* embedded space */
        "AAAAAAAAAAAAAAAAAAAAAB==",     /* non-zero pad bits: not the encoding of 16 bytes */
        "AAAAAAAAAAAAAAAAAAAAA/==",
        "=AAAAAAAAAAAAAAAAAAAAA=",
        "AAAAAAAAAAAAAAAAAAAA=A==",
        "dGhlIHNhbXBsZSBub25jZQ==x",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char fields[512];
        snprintf(fields, sizeof fields, HOST UPGRADE CONNECTION "Sec-WebSocket-Key: %s\r\n" VERSION,
                 bad[i]);
        request(fields);
        expect_reject(WS_E_HANDSHAKE, 400, "Sec-WebSocket-Key must be base64 of 16 bytes");
    }
    static const char *const good[] = {
        "AAAAAAAAAAAAAAAAAAAAAA==", "/////////////////////w==", "+/+/+/+/+/+/+/+/+/+/+g==",
        "zzzzzzzzzzzzzzzzzzzzzQ==", "0123456789abcdefABCDEA==",
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        char fields[512];
        snprintf(fields, sizeof fields,
                 HOST UPGRADE CONNECTION "Sec-WebSocket-Key:  %s \r\n" VERSION, good[i]);
        request(fields);
        expect_ok();
        char want[WS_HANDSHAKE_ACCEPT_LEN + 1];
        ws_handshake_accept_key(good[i], 24, want);
        assert_string_equal(hs.accept, want);
        assert_memory_equal(hs.key.p, good[i], 24);
    }
}

static void test_order_of_checks(void **state)
{
    (void)state;
    /* With everything wrong, each rule speaks in turn as the earlier ones are fixed. */
    request_with("GET / HTTP/1.0", "Sec-WebSocket-Version: 8\r\n");
    expect_reject(WS_E_HANDSHAKE, 400, "HTTP/1.1 required");
    request("Sec-WebSocket-Version: 8\r\n");
    expect_reject(WS_E_HANDSHAKE, 400, "missing Host header");
    request(HOST "Sec-WebSocket-Version: 8\r\n");
    expect_reject(WS_E_HANDSHAKE, 400, "missing Upgrade header");
    request(HOST UPGRADE "Sec-WebSocket-Version: 8\r\n");
    expect_reject(WS_E_HANDSHAKE, 400, "missing Connection header");
    request(HOST UPGRADE CONNECTION "Sec-WebSocket-Version: 8\r\n");
    expect_reject(WS_E_WS_VERSION, 426, "unsupported Sec-WebSocket-Version (only 13)");
    request(HOST UPGRADE CONNECTION VERSION);
    expect_reject(WS_E_HANDSHAKE, 400, "missing Sec-WebSocket-Key header");
}

/* --- subprotocols ----------------------------------------------------------------------------- */

static void test_protocols(void **state)
{
    (void)state;
    static const char *const server[] = {"v2.json", "chat", "superchat"};

    request(GOOD);
    assert_int_equal(ws_handshake_select_protocol(&req, server, 3), -1);
    assert_false(ws_handshake_offers_protocol(&req, "chat", 4));

    request(GOOD "Sec-WebSocket-Protocol: mqtt, wamp\r\n");
    assert_int_equal(ws_handshake_select_protocol(&req, server, 3), -1);
    assert_int_equal(ws_handshake_select_protocol(&req, server, 0), -1);

    /* Server preference wins over the client's order. */
    request(GOOD "Sec-WebSocket-Protocol: superchat, chat\r\n");
    assert_int_equal(ws_handshake_select_protocol(&req, server, 3), 1);

    /* Several fields form one list. */
    request(GOOD "Sec-WebSocket-Protocol: superchat\r\n"
                 "sec-websocket-protocol: ,mqtt , v2.json\r\n");
    assert_int_equal(ws_handshake_select_protocol(&req, server, 3), 0);
    assert_true(ws_handshake_offers_protocol(&req, "mqtt", 4));
    assert_true(ws_handshake_offers_protocol(&req, "superchat", 9));
    assert_false(ws_handshake_offers_protocol(&req, "super", 5));
    assert_false(ws_handshake_offers_protocol(&req, "", 0));

    /* Exact, case-sensitive match. */
    request(GOOD "Sec-WebSocket-Protocol: Chat, CHAT, chat2\r\n");
    assert_int_equal(ws_handshake_select_protocol(&req, server, 3), -1);
    assert_true(ws_handshake_offers_protocol(&req, "chat2", 5));
    assert_true(ws_handshake_offers_protocol(&req, "chat2x", 5));
}

/* --- permessage-deflate offers (RFC 7692 §7) ------------------------------------------------ */

struct offer_case {
    const char *fields; /* Sec-WebSocket-Extensions lines */
    size_t n;
    struct ws_deflate_offer want[WS_HANDSHAKE_MAX_OFFERS];
};

#define EXT "Sec-WebSocket-Extensions: "
#define PMD "permessage-deflate"

static const struct offer_case offer_cases[] = {
    {"", 0, {{0}}},
    {EXT PMD "\r\n", 1, {{false, false, 0, 0}}},
    {EXT "PerMessage-Deflate\r\n", 1, {{false, false, 0, 0}}},
    {EXT PMD "; client_max_window_bits\r\n", 1, {{false, false, 0, -1}}},
    {EXT PMD "; client_max_window_bits=8\r\n", 1, {{false, false, 0, 8}}},
    {EXT PMD ";server_no_context_takeover;client_no_context_takeover;server_max_window_bits=10;"
             "client_max_window_bits=15\r\n",
     1,
     {{true, true, 10, 15}}},
    {EXT PMD " ; server_max_window_bits = 9 ; client_no_context_takeover \r\n",
     1,
     {{false, true, 9, 0}}},
    /* Quoted values (RFC 6455 §9.1: they unescape to a token). */
    {EXT PMD "; server_max_window_bits=\"15\"\r\n", 1, {{false, false, 15, 0}}},
    {EXT PMD "; client_max_window_bits=\"1\\2\"\r\n", 1, {{false, false, 0, 12}}},
    /* Several offers, in the client's order, across fields. */
    {EXT PMD "; server_max_window_bits=10; client_max_window_bits, " PMD
             "; client_max_window_bits, " PMD "\r\n",
     3,
     {{false, false, 10, -1}, {false, false, 0, -1}, {false, false, 0, 0}}},
    {EXT PMD "; server_no_context_takeover\r\n" EXT "x-foo, " PMD "\r\n",
     2,
     {{true, false, 0, 0}, {false, false, 0, 0}}},
    {EXT " , ," PMD ",,\r\n", 1, {{false, false, 0, 0}}},
    /* Other extensions are ignored, parameters and all. */
    {EXT "x-webkit-deflate-frame; no_context_takeover, " PMD "\r\n", 1, {{false, false, 0, 0}}},
    {EXT "foo; server_max_window_bits=99; bar=\"a, b\"\r\n", 0, {{0}}},
    {EXT "permessage-deflate-x\r\n", 0, {{0}}},
    /* Invalid offers are skipped (RFC 7692 §7: unknown or repeated parameter, bad value). */
    {EXT PMD "; server_max_window_bits\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=7\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=16\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=08\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=015\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=abc\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=\"\"\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=\"1 5\"\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=\"15000000\"\r\n", 0, {{0}}},
    {EXT PMD "; client_max_window_bits=0\r\n", 0, {{0}}},
    {EXT PMD "; client_max_window_bits=-1\r\n", 0, {{0}}},
    {EXT PMD "; server_no_context_takeover=1\r\n", 0, {{0}}},
    {EXT PMD "; client_no_context_takeover=\"\"\r\n", 0, {{0}}},
    {EXT PMD "; server_no_context_takeover; server_no_context_takeover\r\n", 0, {{0}}},
    {EXT PMD "; client_max_window_bits; client_max_window_bits=10\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=10; server_max_window_bits=10\r\n", 0, {{0}}},
    {EXT PMD "; foo\r\n", 0, {{0}}},
    {EXT PMD "; mux=1\r\n", 0, {{0}}},
    /* ... and parsing goes on with the next offer. */
    {EXT PMD "; foo, " PMD "; client_max_window_bits\r\n", 1, {{false, false, 0, -1}}},
    {EXT PMD "; server_max_window_bits=16, " PMD "; server_max_window_bits=15\r\n",
     1,
     {{false, false, 15, 0}}},
    /* Syntax errors drop the element up to the next comma outside quotes. */
    {EXT PMD "; =3, " PMD "; client_max_window_bits\r\n", 1, {{false, false, 0, -1}}},
    {EXT PMD " server_no_context_takeover, " PMD "\r\n", 1, {{false, false, 0, 0}}},
    {EXT PMD "; server_max_window_bits=\"1,5\", " PMD "\r\n", 1, {{false, false, 0, 0}}},
    {EXT PMD "; a=\"x\\\"y, z\" junk, " PMD "; server_no_context_takeover\r\n",
     1,
     {{true, false, 0, 0}}},
    {EXT PMD "; server_max_window_bits=\"15, " PMD "\r\n", 0, {{0}}},
    {EXT PMD "; server_max_window_bits=\"15\\\r\n" EXT PMD "\r\n", 1, {{false, false, 0, 0}}},
    {EXT "; " PMD ", " PMD ";\r\n", 0, {{0}}},
    {EXT "\"" PMD "\", " PMD "\r\n", 1, {{false, false, 0, 0}}},
    {EXT PMD "=1, " PMD "\r\n", 1, {{false, false, 0, 0}}},
};

static void test_deflate_offers(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof offer_cases / sizeof offer_cases[0]; i++) {
        const struct offer_case *c = &offer_cases[i];
        char fields[1024];
        snprintf(fields, sizeof fields, GOOD "%s", c->fields);
        request(fields);
        expect_ok();
        if (hs.noffers != c->n)
            print_error("case %zu: %s\n", i, c->fields);
        assert_int_equal(hs.noffers, c->n);
        for (size_t k = 0; k < c->n; k++) {
            const struct ws_deflate_offer *got = &hs.offers[k];
            const struct ws_deflate_offer *want = &c->want[k];
            if (memcmp(got, want, sizeof *got) != 0)
                print_error("case %zu offer %zu: %s\n", i, k, c->fields);
            assert_int_equal(got->server_no_context_takeover, want->server_no_context_takeover);
            assert_int_equal(got->client_no_context_takeover, want->client_no_context_takeover);
            assert_int_equal(got->server_max_window_bits, want->server_max_window_bits);
            assert_int_equal(got->client_max_window_bits, want->client_max_window_bits);
        }
    }
}

static void test_deflate_window_range(void **state)
{
    (void)state;
    for (int bits = 0; bits <= 20; bits++) {
        char fields[1024];
        snprintf(fields, sizeof fields,
                 GOOD EXT PMD "; server_max_window_bits=%d; client_max_window_bits=%d\r\n", bits,
                 bits);
        request(fields);
        expect_ok();
        bool valid = bits >= 8 && bits <= 15;
        assert_int_equal(hs.noffers, valid ? 1 : 0);
        if (valid) {
            assert_int_equal(hs.offers[0].server_max_window_bits, bits);
            assert_int_equal(hs.offers[0].client_max_window_bits, bits);
        }
    }
}

static void test_deflate_max_offers(void **state)
{
    (void)state;
    char fields[2048];
    size_t n = (size_t)snprintf(fields, sizeof fields, GOOD EXT);
    for (int i = 0; i < WS_HANDSHAKE_MAX_OFFERS + 3; i++)
        n += (size_t)snprintf(fields + n, sizeof fields - n, "%s" PMD "; server_max_window_bits=%d",
                              i ? ", " : "", 8 + i % 8);
    snprintf(fields + n, sizeof fields - n, "\r\n");
    request(fields);
    expect_ok();
    assert_int_equal(hs.noffers, WS_HANDSHAKE_MAX_OFFERS);
    for (int i = 0; i < WS_HANDSHAKE_MAX_OFFERS; i++)
        assert_int_equal(hs.offers[i].server_max_window_bits, 8 + i % 8);
}

static void test_deflate_not_parsed_on_reject(void **state)
{
    (void)state;
    request(HOST UPGRADE CONNECTION VERSION EXT PMD "\r\n");
    expect_reject(WS_E_HANDSHAKE, 400, "missing Sec-WebSocket-Key header");
    assert_int_equal(hs.noffers, 0);
}

/* --- responses -------------------------------------------------------------------------------- */

/* Parses a response's head by swapping its status line for a request line, so the request parser
 * can check the fields. Returns the status code; *body points after the head. */
static struct ws_http_request resp;
static char resp_text[4096];

static int parse_response(const char *out, size_t len, const char **body, size_t *body_len)
{
    const char *eol = memchr(out, '\r', len);
    assert_non_null(eol);
    assert_true(len > 12);
    assert_memory_equal(out, "HTTP/1.1 ", 9);
    int status = (out[9] - '0') * 100 + (out[10] - '0') * 10 + (out[11] - '0');
    assert_int_equal(out[12], ' ');
    size_t status_line = (size_t)(eol - out);
    static const char line[] = "GET / HTTP/1.1";
    size_t n = sizeof line - 1 + (len - status_line);
    assert_true(n <= sizeof resp_text);
    memcpy(resp_text, line, sizeof line - 1);
    memcpy(resp_text + sizeof line - 1, eol, len - status_line);
    size_t scanned = 0;
    assert_int_equal(ws_http_parse(resp_text, n, sizeof resp_text, &scanned, &resp), 0);
    *body = resp_text + resp.head_len;
    *body_len = n - resp.head_len;
    return status;
}

static void assert_field(const char *name, const char *value)
{
    assert_int_equal(ws_http_header_count(&resp, name), 1);
    const struct ws_span *v = ws_http_header(&resp, name);
    assert_int_equal(v->n, strlen(value));
    assert_memory_equal(v->p, value, v->n);
}

static void test_response_101(void **state)
{
    (void)state;
    request(GOOD);
    expect_ok();
    char out[512];
    size_t n = ws_handshake_response(out, sizeof out, &hs, NULL, 0, NULL);
    static const char want[] = "HTTP/1.1 101 Switching Protocols\r\n"
                               "Upgrade: websocket\r\n"
                               "Connection: Upgrade\r\n"
                               "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"
                               "\r\n";
    assert_int_equal(n, sizeof want - 1);
    assert_memory_equal(out, want, n);

    const char *body;
    size_t body_len;
    assert_int_equal(parse_response(out, n, &body, &body_len), 101);
    assert_int_equal(body_len, 0);
    assert_int_equal(resp.nheaders, 3);
    assert_field("Sec-WebSocket-Accept", RFC_ACCEPT);
    assert_null(ws_http_header(&resp, "Sec-WebSocket-Protocol"));
    assert_null(ws_http_header(&resp, "Sec-WebSocket-Extensions"));

    /* Empty protocol and extensions mean none. */
    assert_int_equal(ws_handshake_response(out, sizeof out, &hs, "chat", 0, ""), sizeof want - 1);
}

static void test_response_101_with_options(void **state)
{
    (void)state;
    request(GOOD "Sec-WebSocket-Protocol: chat, superchat\r\n" EXT PMD "\r\n");
    expect_ok();
    char out[512];
    size_t n = ws_handshake_response(out, sizeof out, &hs, "superchat!", 9,
                                     "permessage-deflate; server_no_context_takeover");
    static const char want[] =
        "HTTP/1.1 101 Switching Protocols\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        "Sec-WebSocket-Accept: " RFC_ACCEPT "\r\n"
        "Sec-WebSocket-Protocol: superchat\r\n"
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
        "\r\n";
    assert_int_equal(n, sizeof want - 1);
    assert_memory_equal(out, want, n);

    const char *body;
    size_t body_len;
    assert_int_equal(parse_response(out, n, &body, &body_len), 101);
    assert_int_equal(body_len, 0);
    assert_field("Upgrade", "websocket");
    assert_field("Connection", "Upgrade");
    assert_field("Sec-WebSocket-Protocol", "superchat");
    assert_field("Sec-WebSocket-Extensions", "permessage-deflate; server_no_context_takeover");

    /* Every capacity below the length fails whole, the exact one succeeds. */
    for (size_t cap = 0; cap < n; cap++) {
        char small[512];
        assert_int_equal(ws_handshake_response(small, cap, &hs, "superchat", 9,
                                               "permessage-deflate; server_no_context_takeover"),
                         0);
    }
    char exact[sizeof want - 1];
    assert_int_equal(ws_handshake_response(exact, sizeof exact, &hs, "superchat", 9,
                                           "permessage-deflate; server_no_context_takeover"),
                     n);
    assert_memory_equal(exact, want, n);
}

static void test_response_refuses_splitting(void **state)
{
    (void)state;
    request(GOOD);
    expect_ok();
    char out[512];
    assert_int_equal(ws_handshake_response(out, sizeof out, &hs, "a\r\nSet-Cookie: x=1", 18, NULL),
                     0);
    assert_int_equal(ws_handshake_response(out, sizeof out, &hs, "a b", 3, NULL), 0);
    assert_int_equal(ws_handshake_response(out, sizeof out, &hs, "a,b", 3, NULL), 0);
    assert_int_equal(ws_handshake_response(out, sizeof out, &hs, NULL, 0, "x\r\nSet-Cookie: y"), 0);
    assert_true(ws_handshake_response(out, sizeof out, &hs, "a.b~c", 5, "x; y=\"1\"") > 0);
}

static void test_error_response_400(void **state)
{
    (void)state;
    request(HOST UPGRADE CONNECTION VERSION);
    int rc = ws_handshake_check(&req, &hs);
    char out[1024];
    size_t n = ws_handshake_error_response(out, sizeof out, ws_err_http_status(rc), hs.reason,
                                           strlen(hs.reason), NULL);
    static const char want[] = "HTTP/1.1 400 Bad Request\r\n"
                               "Content-Type: text/plain; charset=utf-8\r\n"
                               "Content-Length: 32\r\n"
                               "Connection: close\r\n"
                               "\r\n"
                               "missing Sec-WebSocket-Key header";
    assert_int_equal(n, sizeof want - 1);
    assert_memory_equal(out, want, n);

    const char *body;
    size_t body_len;
    assert_int_equal(parse_response(out, n, &body, &body_len), 400);
    assert_field("Content-Length", "32");
    assert_field("Connection", "close");
    assert_int_equal(body_len, strlen(hs.reason));
    assert_memory_equal(body, hs.reason, body_len);

    for (size_t cap = 0; cap < n; cap++)
        assert_int_equal(
            ws_handshake_error_response(out, cap, 400, hs.reason, strlen(hs.reason), NULL), 0);
    assert_int_equal(ws_handshake_error_response(out, n, 400, hs.reason, strlen(hs.reason), NULL),
                     n);
}

static void test_error_response_426(void **state)
{
    (void)state;
    request(HOST UPGRADE CONNECTION KEY "Sec-WebSocket-Version: 8\r\n");
    int rc = ws_handshake_check(&req, &hs);
    assert_int_equal(ws_err_http_status(rc), 426);
    char out[1024];
    size_t n =
        ws_handshake_error_response(out, sizeof out, hs.status, hs.reason, strlen(hs.reason), NULL);
    const char *body;
    size_t body_len;
    assert_int_equal(parse_response(out, n, &body, &body_len), 426);
    assert_memory_equal(out, "HTTP/1.1 426 Upgrade Required\r\n", 31);
    /* RFC 6455 §4.4. */
    assert_field("Sec-WebSocket-Version", "13");
    assert_field("Content-Type", "text/plain; charset=utf-8");
    assert_int_equal(body_len, strlen(hs.reason));
}

static void test_error_response_405_503(void **state)
{
    (void)state;
    char out[1024];
    const char *body;
    size_t body_len;

    size_t n = ws_handshake_error_response(out, sizeof out, 405, "method not allowed", 18, NULL);
    assert_int_equal(parse_response(out, n, &body, &body_len), 405);
    assert_memory_equal(out, "HTTP/1.1 405 Method Not Allowed\r\n", 33);
    assert_field("Allow", "GET");
    assert_null(ws_http_header(&resp, "Sec-WebSocket-Version"));
    n = ws_handshake_error_response(out, sizeof out, 405, "", 0, "allow: GET, POST\r\n");
    assert_int_equal(parse_response(out, n, &body, &body_len), 405);
    assert_field("Allow", "GET, POST");

    n = ws_handshake_error_response(out, sizeof out, 503, "server full", 11, NULL);
    assert_int_equal(parse_response(out, n, &body, &body_len), 503);
    assert_field("Retry-After", "5");
    assert_int_equal(body_len, 11);
    assert_memory_equal(body, "server full", 11);

    /* The caller's Retry-After replaces ours. */
    n = ws_handshake_error_response(out, sizeof out, 503, "busy", 4,
                                    "X-Why: full\r\nRetry-After: 30\r\n");
    assert_int_equal(parse_response(out, n, &body, &body_len), 503);
    assert_field("Retry-After", "30");
    assert_field("X-Why", "full");
    n = ws_handshake_error_response(out, sizeof out, 503, "busy", 4, "retry-after: 1\r\n");
    assert_int_equal(parse_response(out, n, &body, &body_len), 503);
    assert_field("Retry-After", "1");
    /* A field that merely ends in the name is not it. */
    n = ws_handshake_error_response(out, sizeof out, 503, "busy", 4, "X-Retry-After: 1\r\n");
    assert_int_equal(parse_response(out, n, &body, &body_len), 503);
    assert_field("Retry-After", "5");
}

static void test_error_response_other(void **state)
{
    (void)state;
    char out[1024];
    const char *body;
    size_t body_len;

    /* An app refusal with its own status, headers and a body. */
    static const char msg[] = "go away\n";
    size_t n = ws_handshake_error_response(out, sizeof out, 403, msg, sizeof msg - 1,
                                           "Set-Cookie: a=b\r\nX-Reason: nope\r\n");
    assert_int_equal(parse_response(out, n, &body, &body_len), 403);
    assert_memory_equal(out, "HTTP/1.1 403 Forbidden\r\n", 24);
    assert_field("Content-Length", "8");
    assert_field("Set-Cookie", "a=b");
    assert_field("X-Reason", "nope");
    assert_null(ws_http_header(&resp, "Retry-After"));
    assert_null(ws_http_header(&resp, "Allow"));
    assert_int_equal(body_len, 8);
    assert_memory_equal(body, msg, 8);

    n = ws_handshake_error_response(out, sizeof out, 431, NULL, 0, NULL);
    assert_int_equal(parse_response(out, n, &body, &body_len), 431);
    assert_field("Content-Length", "0");
    assert_int_equal(body_len, 0);

    n = ws_handshake_error_response(out, sizeof out, 599, "x", 1, NULL);
    assert_memory_equal(out, "HTTP/1.1 599 Unknown\r\n", 22);

    assert_int_equal(ws_handshake_error_response(out, sizeof out, 99, "x", 1, NULL), 0);
    assert_int_equal(ws_handshake_error_response(out, sizeof out, 1000, "x", 1, NULL), 0);
    assert_int_equal(ws_handshake_error_response(out, sizeof out, -400, "x", 1, NULL), 0);
}

static void test_end_to_end_pipelined(void **state)
{
    (void)state;
    /* Head and the first frame in one read: check, answer, and the frame bytes are still there. */
    static const char wire[] = "GET /chat HTTP/1.1\r\n" GOOD "\r\n"
                               "\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58";
    size_t scanned = 0;
    assert_int_equal(ws_http_parse(wire, sizeof wire - 1, 8192, &scanned, &req), 0);
    assert_int_equal(ws_handshake_check(&req, &hs), 0);
    assert_string_equal(hs.accept, RFC_ACCEPT);
    assert_int_equal(sizeof wire - 1 - req.head_len, 11);
    assert_memory_equal(wire + req.head_len, "\x81\x85", 2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rfc_request),
        cmocka_unit_test(test_accept_key_vector),
        cmocka_unit_test(test_accept_key_long),
        cmocka_unit_test(test_case_and_lists),
        cmocka_unit_test(test_target_with_query),
        cmocka_unit_test(test_same_key_twice),
        cmocka_unit_test(test_is_upgrade),
        cmocka_unit_test(test_method),
        cmocka_unit_test(test_http_version),
        cmocka_unit_test(test_host),
        cmocka_unit_test(test_upgrade),
        cmocka_unit_test(test_connection),
        cmocka_unit_test(test_ws_version),
        cmocka_unit_test(test_key_missing_and_duplicate),
        cmocka_unit_test(test_key_shape),
        cmocka_unit_test(test_order_of_checks),
        cmocka_unit_test(test_protocols),
        cmocka_unit_test(test_deflate_offers),
        cmocka_unit_test(test_deflate_window_range),
        cmocka_unit_test(test_deflate_max_offers),
        cmocka_unit_test(test_deflate_not_parsed_on_reject),
        cmocka_unit_test(test_response_101),
        cmocka_unit_test(test_response_101_with_options),
        cmocka_unit_test(test_response_refuses_splitting),
        cmocka_unit_test(test_error_response_400),
        cmocka_unit_test(test_error_response_426),
        cmocka_unit_test(test_error_response_405_503),
        cmocka_unit_test(test_error_response_other),
        cmocka_unit_test(test_end_to_end_pipelined),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
