/* Fuzz target for the opening handshake (src/proto/handshake.c). The input is a request head,
 * optionally followed by bytes used as a hostile subprotocol / extensions value for the 101. Checks
 * that:
 *   - ws_handshake_check agrees with a reference written from RFC 6455 §4.2.1 (same order of
 *     checks: method, version, Host, Upgrade, Connection, Sec-WebSocket-Version, key), and that
 *     status 101 comes with return 0, no reason, a 28-character base64 accept equal to
 *     base64(SHA-1(key GUID)) computed here, and a key span inside the buffer; rejections carry a
 *     reason and ws_err_http_status(err) == status; deflate offers hold only legal values;
 *   - ws_handshake_select_protocol picks the first server protocol the client offered (naive
 *     comma-list scan here) with a fixed server list;
 *   - ws_handshake_response writes a 101 that parses back field by field (no response splitting,
 *     whatever protocol / extensions bytes are passed), returns 0 when cap is one byte short and
 *     the same bytes when cap is exact;
 *   - ws_handshake_error_response writes a response that parses back with the right status,
 *     Content-Length and the extra field 426 / 405 require;
 *   - ws_handshake_accept_key gives the same answer on its inline and its long-key path;
 *   - ws_deflate_negotiate (config from the input's last byte) accepts the first offer it can
 *     honour (RFC 7692 §7: all but server_max_window_bits=8) and answers with a value that parses
 *     back as exactly the agreed parameters, never a window above the offer's and never
 *     client_max_window_bits unless offered. */
#include "fuzz.h"

#include "ws/deflate.h"
#include "ws/err.h"
#include "ws/handshake.h"
#include "ws/http.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_HEAD 8192

static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
static const char *const server_protocols[] = {"chat", "superchat", "v2.json", "mqtt", "wamp.2"};
#define NPROTOCOLS (sizeof server_protocols / sizeof server_protocols[0])

static bool span_is(struct ws_span s, const char *lit)
{
    return s.n == strlen(lit) && memcmp(s.p, lit, s.n) == 0;
}

static bool span_is_ci(struct ws_span s, const char *lit)
{
    return s.n == strlen(lit) && strncasecmp(s.p, lit, s.n) == 0;
}

static size_t count_named(const struct ws_http_request *req, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < req->nheaders; i++)
        n += span_is_ci(req->headers[i].name, name);
    return n;
}

/* Calls fn on each element of every field named name: split at commas, trimmed of SP / HTAB. */
static bool any_element(const struct ws_http_request *req, const char *name,
                        bool (*fn)(struct ws_span, const char *), const char *arg)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        if (!span_is_ci(req->headers[i].name, name))
            continue;
        const char *p = req->headers[i].value.p, *end = p + req->headers[i].value.n;
        while (p <= end) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *e = comma ? comma : end, *s = p;
            while (s < e && (*s == ' ' || *s == '\t'))
                s++;
            while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            if (e > s && fn((struct ws_span){s, (size_t)(e - s)}, arg))
                return true;
            if (!comma)
                break;
            p = comma + 1;
        }
    }
    return false;
}

/* RFC 4648 §4 alphabet. */
static int b64(unsigned char c)
{
    const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const char *p = c ? strchr(a, c) : NULL;
    return p ? (int)(p - a) : -1;
}

/* RFC 6455 §4.2.1 item 5: the canonical base64 of 16 bytes. */
static bool ref_key_ok(const struct ws_span *k)
{
    if (k->n != 24 || k->p[22] != '=' || k->p[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++) {
        if (b64((unsigned char)k->p[i]) < 0)
            return false;
    }
    /* 16 bytes = 128 bits: the 22nd character carries 2 data bits and 4 zero bits. */
    return strchr("AQgw", k->p[21]) != NULL;
}

/* The status RFC 6455 §4.2.1 and §4.4 call for, checks in the module's documented order. */
static int ref_status(const struct ws_http_request *req)
{
    if (!span_is(req->method, "GET"))
        return 405;
    if (req->version_minor < 1)
        return 400;
    if (count_named(req, "Host") != 1)
        return 400;
    if (!any_element(req, "Upgrade", span_is_ci, "websocket"))
        return 400;
    if (!any_element(req, "Connection", span_is_ci, "upgrade"))
        return 400;
    if (count_named(req, "Sec-WebSocket-Version") != 1)
        return 400;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (span_is_ci(req->headers[i].name, "Sec-WebSocket-Version") &&
            !span_is(req->headers[i].value, "13"))
            return 426;
    }
    if (count_named(req, "Sec-WebSocket-Key") != 1)
        return 400;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (span_is_ci(req->headers[i].name, "Sec-WebSocket-Key") &&
            !ref_key_ok(&req->headers[i].value))
            return 400;
    }
    return 101;
}

/* base64(SHA-1(key GUID)) through a heap copy and the one-shot digest. */
static void ref_accept(const char *key, size_t n, char out[WS_HANDSHAKE_ACCEPT_LEN + 1])
{
    size_t total = n + sizeof guid - 1;
    unsigned char *joined = fuzz_malloc(total), digest[SHA_DIGEST_LENGTH];
    if (n)
        memcpy(joined, key, n);
    memcpy(joined + n, guid, sizeof guid - 1);
    SHA1(joined, total, digest);
    free(joined);
    FUZZ_CHECK(EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH) == 28);
}

static void check_accept(const char *key, size_t n)
{
    char got[WS_HANDSHAKE_ACCEPT_LEN + 1], want[WS_HANDSHAKE_ACCEPT_LEN + 1];
    memset(got, 0x55, sizeof got);
    ws_handshake_accept_key(key, n, got);
    ref_accept(key, n, want);
    FUZZ_CHECK(got[WS_HANDSHAKE_ACCEPT_LEN] == 0 && strcmp(got, want) == 0);
}

/* Parses a response back by swapping its status line for a request line (so the request parser
 * checks every field line). Returns its status; fills *out_req, *body_at (where the body starts in
 * scratch) and *total (bytes in scratch). */
static int parse_response(const char *out, size_t n, char *scratch, size_t cap,
                          struct ws_http_request *out_req, size_t *body_at, size_t *total)
{
    FUZZ_CHECK(n > 13 && memcmp(out, "HTTP/1.1 ", 9) == 0 && out[12] == ' ');
    int status = (out[9] - '0') * 100 + (out[10] - '0') * 10 + (out[11] - '0');
    const char *eol = memchr(out, '\r', n);
    FUZZ_CHECK(eol != NULL);
    static const char line[] = "GET / HTTP/1.1";
    size_t rest = n - (size_t)(eol - out);
    FUZZ_CHECK(sizeof line - 1 + rest <= cap);
    memcpy(scratch, line, sizeof line - 1);
    memcpy(scratch + sizeof line - 1, eol, rest);
    size_t scanned = 0;
    FUZZ_CHECK(ws_http_parse(scratch, sizeof line - 1 + rest, cap, &scanned, out_req) == 0);
    *body_at = out_req->head_len;
    *total = sizeof line - 1 + rest;
    return status;
}

static bool field_is(const struct ws_http_request *r, const char *name, const char *value,
                     size_t vn)
{
    return count_named(r, name) == 1 && ws_http_header(r, name)->n == vn &&
           memcmp(ws_http_header(r, name)->p, value, vn) == 0;
}

/* Writes the 101 with protocol / extensions and checks it field by field. */
static void check_101(const struct ws_handshake *hs, const char *protocol, size_t protocol_len,
                      const char *extensions)
{
    static char out[2 * MAX_HEAD], scratch[2 * MAX_HEAD + 64];
    size_t n = ws_handshake_response(out, sizeof out, hs, protocol, protocol_len, extensions);
    bool proto_token = true;
    for (size_t i = 0; i < protocol_len && protocol; i++)
        proto_token = proto_token && ws_http_is_tchar((unsigned char)protocol[i]);
    bool ext_safe = true;
    for (const char *e = extensions; e && *e; e++)
        ext_safe = ext_safe && (((unsigned char)*e >= 0x20 || *e == '\t') && *e != 0x7f);
    if (!proto_token || !ext_safe) {
        /* Refused rather than letting a value split the response. */
        FUZZ_CHECK(n == 0);
        return;
    }
    FUZZ_CHECK(n > 0);
    struct ws_http_request r;
    size_t body_at, total;
    FUZZ_CHECK(parse_response(out, n, scratch, sizeof scratch, &r, &body_at, &total) == 101);
    FUZZ_CHECK(body_at == total); /* the head is everything: no stray bytes after it */
    bool has_proto = protocol && protocol_len > 0, has_ext = extensions && *extensions;
    FUZZ_CHECK(r.nheaders == 3 + has_proto + has_ext);
    FUZZ_CHECK(field_is(&r, "Upgrade", "websocket", 9));
    FUZZ_CHECK(field_is(&r, "Connection", "Upgrade", 7));
    FUZZ_CHECK(field_is(&r, "Sec-WebSocket-Accept", hs->accept, WS_HANDSHAKE_ACCEPT_LEN));
    if (has_proto)
        FUZZ_CHECK(field_is(&r, "Sec-WebSocket-Protocol", protocol, protocol_len));
    if (has_ext) {
        /* Written verbatim; the parser trims the whitespace around it. */
        const char *e = extensions, *end = extensions + strlen(extensions);
        while (e < end && (*e == ' ' || *e == '\t'))
            e++;
        while (end > e && (end[-1] == ' ' || end[-1] == '\t'))
            end--;
        FUZZ_CHECK(field_is(&r, "Sec-WebSocket-Extensions", e, (size_t)(end - e)));
    }
    /* Exact fit works, one byte short writes nothing. */
    static char again[2 * MAX_HEAD];
    FUZZ_CHECK(ws_handshake_response(again, n, hs, protocol, protocol_len, extensions) == n);
    FUZZ_CHECK(memcmp(again, out, n) == 0);
    FUZZ_CHECK(ws_handshake_response(again, n - 1, hs, protocol, protocol_len, extensions) == 0);
}

static void check_error_response(int status, const char *reason)
{
    static char out[1024], scratch[1100];
    size_t body_len = strlen(reason);
    size_t n = ws_handshake_error_response(out, sizeof out, status, reason, body_len, NULL);
    FUZZ_CHECK(n > 0);
    struct ws_http_request r;
    size_t body_at, total;
    FUZZ_CHECK(parse_response(out, n, scratch, sizeof scratch, &r, &body_at, &total) == status);
    char len_text[24];
    snprintf(len_text, sizeof len_text, "%zu", body_len);
    FUZZ_CHECK(field_is(&r, "Content-Length", len_text, strlen(len_text)));
    FUZZ_CHECK(field_is(&r, "Connection", "close", 5));
    if (status == 426)
        FUZZ_CHECK(field_is(&r, "Sec-WebSocket-Version", "13", 2));
    if (status == 405)
        FUZZ_CHECK(field_is(&r, "Allow", "GET", 3));
    /* The body follows the head, and nothing else does. */
    FUZZ_CHECK(total - body_at == body_len);
    FUZZ_CHECK(memcmp(scratch + body_at, reason, body_len) == 0);
    FUZZ_CHECK(ws_handshake_error_response(out, n - 1, status, reason, body_len, NULL) == 0);
}

static bool contains_ci(struct ws_span s, const char *lit)
{
    size_t n = strlen(lit);
    for (size_t i = 0; i + n <= s.n; i++) {
        if (strncasecmp(s.p + i, lit, n) == 0)
            return true;
    }
    return false;
}

static bool offered(struct ws_span t, const char *protocol)
{
    return span_is(t, protocol);
}

/* The answer's parameters, read back with the handshake's own offer parser. */
static void parse_answer(const char *answer, struct ws_deflate_offer *o)
{
    static char text[512];
    int n = snprintf(text, sizeof text,
                     "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "Sec-WebSocket-Extensions: %s\r\n\r\n",
                     answer);
    FUZZ_CHECK(n > 0 && (size_t)n < sizeof text);
    struct ws_http_request r;
    struct ws_handshake h;
    size_t scanned = 0;
    FUZZ_CHECK(ws_http_parse(text, (size_t)n, sizeof text, &scanned, &r) == 0);
    FUZZ_CHECK(ws_handshake_check(&r, &h) == 0);
    FUZZ_CHECK(h.noffers == 1);
    *o = h.offers[0];
}

static void check_negotiate(const struct ws_handshake *hs, uint8_t k)
{
    struct ws_deflate_config cfg;
    ws_deflate_config_init(&cfg);
    struct ws_deflate_params out;
    char answer[WS_DEFLATE_RESPONSE_MAX];
    memset(answer, 'x', sizeof answer);
    FUZZ_CHECK(ws_deflate_negotiate(&cfg, hs->offers, hs->noffers, &out, answer, sizeof answer) ==
               0); /* disabled by default */
    FUZZ_CHECK(answer[0] == 'x');
    cfg.enabled = true;
    cfg.server_max_window_bits = 9 + k % 7;
    cfg.client_max_window_bits = 9 + (k >> 3) % 7;
    cfg.server_context_takeover = k & 0x40;
    cfg.client_no_context_takeover = k & 0x80;
    int rc = ws_deflate_negotiate(&cfg, hs->offers, hs->noffers, &out, answer, sizeof answer);

    /* RFC 7692 §7.1.2.1: zlib cannot honour server_max_window_bits=8; every other valid offer
     * can be accepted. */
    const struct ws_deflate_offer *o = NULL;
    for (size_t i = 0; i < hs->noffers && !o; i++) {
        if (hs->offers[i].server_max_window_bits != 8)
            o = &hs->offers[i];
    }
    FUZZ_CHECK(rc == (o != NULL));
    if (!o)
        return;
    FUZZ_CHECK(strlen(answer) < WS_DEFLATE_RESPONSE_MAX);
    FUZZ_CHECK(strncmp(answer, "permessage-deflate", 18) == 0);
    FUZZ_CHECK(out.server_no_context_takeover ==
               (o->server_no_context_takeover || !cfg.server_context_takeover));
    FUZZ_CHECK(out.client_no_context_takeover ==
               (o->client_no_context_takeover || cfg.client_no_context_takeover));
    FUZZ_CHECK(out.server_max_window_bits >= WS_DEFLATE_MIN_SERVER_WINDOW_BITS &&
               out.server_max_window_bits <= cfg.server_max_window_bits);
    if (o->server_max_window_bits)
        FUZZ_CHECK(out.server_max_window_bits <= o->server_max_window_bits);
    FUZZ_CHECK(out.client_max_window_bits >= WS_DEFLATE_MIN_CLIENT_WINDOW_BITS &&
               out.client_max_window_bits <= WS_DEFLATE_MAX_WINDOW_BITS);
    if (o->client_max_window_bits > 0)
        FUZZ_CHECK(out.client_max_window_bits <= o->client_max_window_bits);
    if (o->client_max_window_bits == 0) /* the client did not allow us to limit it */
        FUZZ_CHECK(out.client_max_window_bits == WS_DEFLATE_MAX_WINDOW_BITS);

    struct ws_deflate_offer a;
    parse_answer(answer, &a);
    FUZZ_CHECK(a.server_no_context_takeover == out.server_no_context_takeover);
    FUZZ_CHECK(a.client_no_context_takeover == out.client_no_context_takeover);
    FUZZ_CHECK(a.server_max_window_bits == 0
                   ? out.server_max_window_bits == 15
                   : a.server_max_window_bits == out.server_max_window_bits);
    FUZZ_CHECK(a.client_max_window_bits != -1);
    if (a.client_max_window_bits != 0)
        FUZZ_CHECK(o->client_max_window_bits != 0 &&
                   a.client_max_window_bits == out.client_max_window_bits);
    else
        FUZZ_CHECK(out.client_max_window_bits == 15);

    /* The agreed parameters are ones the module takes. */
    struct ws_deflate d;
    ws_deflate_init(&d, &out, NULL);
    ws_deflate_reset(&d);
    check_101(hs, NULL, 0, answer);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    struct ws_http_request req;
    size_t scanned = 0;

    /* Both paths of the accept computation, on keys of any length. */
    check_accept(buf, size < 300 ? size : 300);

    if (ws_http_parse(buf, size, MAX_HEAD, &scanned, &req) != 0)
        return 0;
    const char *extra = buf + req.head_len;
    size_t extra_len = size - req.head_len;

    struct ws_handshake hs;
    memset(&hs, 0x5A, sizeof hs);
    int rc = ws_handshake_check(&req, &hs);
    int want = ref_status(&req);
    FUZZ_CHECK(hs.status == want);
    FUZZ_CHECK(ws_handshake_is_upgrade(&req) ==
               any_element(&req, "Upgrade", span_is_ci, "websocket"));

    /* Subprotocols: the server's first choice the client offered. */
    int pick = ws_handshake_select_protocol(&req, server_protocols, NPROTOCOLS);
    int ref_pick = -1;
    for (size_t i = 0; i < NPROTOCOLS && ref_pick < 0; i++) {
        if (any_element(&req, "Sec-WebSocket-Protocol", offered, server_protocols[i]))
            ref_pick = (int)i;
    }
    FUZZ_CHECK(pick == ref_pick);
    FUZZ_CHECK(ws_handshake_select_protocol(&req, server_protocols, 0) == -1);

    if (rc != 0) {
        FUZZ_CHECK(rc < 0 && hs.status != 101 && hs.reason != NULL);
        FUZZ_CHECK(ws_err_http_status(rc) == hs.status);
        FUZZ_CHECK(strchr(hs.reason, '\r') == NULL && strchr(hs.reason, '\n') == NULL);
        FUZZ_CHECK(hs.noffers == 0);
        check_error_response(hs.status, hs.reason);
        return 0;
    }

    FUZZ_CHECK(hs.status == 101 && hs.reason == NULL);
    FUZZ_CHECK(strlen(hs.accept) == WS_HANDSHAKE_ACCEPT_LEN);
    for (size_t i = 0; i < WS_HANDSHAKE_ACCEPT_LEN - 1; i++)
        FUZZ_CHECK(b64((unsigned char)hs.accept[i]) >= 0);
    FUZZ_CHECK(hs.accept[WS_HANDSHAKE_ACCEPT_LEN - 1] == '=');
    const struct ws_span *key = ws_http_header(&req, "Sec-WebSocket-Key");
    FUZZ_CHECK(key && hs.key.p == key->p && hs.key.n == key->n && hs.key.n == 24);
    char want_accept[WS_HANDSHAKE_ACCEPT_LEN + 1];
    ref_accept(hs.key.p, hs.key.n, want_accept);
    FUZZ_CHECK(strcmp(hs.accept, want_accept) == 0);

    /* RFC 7692 §7.1: only legal values survive in an offer. */
    FUZZ_CHECK(hs.noffers <= WS_HANDSHAKE_MAX_OFFERS);
    bool any_pmd = false;
    for (size_t i = 0; i < req.nheaders; i++) {
        if (span_is_ci(req.headers[i].name, "Sec-WebSocket-Extensions"))
            any_pmd = any_pmd || contains_ci(req.headers[i].value, "permessage-deflate");
    }
    for (size_t i = 0; i < hs.noffers; i++) {
        const struct ws_deflate_offer *o = &hs.offers[i];
        FUZZ_CHECK(o->server_max_window_bits == 0 ||
                   (o->server_max_window_bits >= 8 && o->server_max_window_bits <= 15));
        FUZZ_CHECK(o->client_max_window_bits == 0 || o->client_max_window_bits == -1 ||
                   (o->client_max_window_bits >= 8 && o->client_max_window_bits <= 15));
    }
    FUZZ_CHECK(hs.noffers == 0 || any_pmd);

    /* The 101: plain; with the chosen protocol and an answer to the first offer; with hostile
     * protocol / extensions bytes taken from after the head. */
    check_101(&hs, NULL, 0, NULL);
    check_negotiate(&hs, data[size - 1]);
    char ext[64] = "";
    if (hs.noffers > 0 && hs.offers[0].server_max_window_bits)
        snprintf(ext, sizeof ext, "permessage-deflate; server_max_window_bits=%d",
                 hs.offers[0].server_max_window_bits);
    else if (hs.noffers > 0)
        snprintf(ext, sizeof ext, "permessage-deflate");
    check_101(&hs, pick >= 0 ? server_protocols[pick] : NULL,
              pick >= 0 ? strlen(server_protocols[pick]) : 0, ext);
    if (extra_len > 0) {
        size_t cut = (unsigned char)extra[0] % (extra_len + 1);
        char *ext_text = fuzz_malloc(extra_len - cut + 1);
        memcpy(ext_text, extra + cut, extra_len - cut);
        ext_text[extra_len - cut] = 0;
        check_101(&hs, extra, cut, ext_text);
        free(ext_text);
    }
    return 0;
}
