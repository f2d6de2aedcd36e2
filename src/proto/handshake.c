/* Server side of the WebSocket opening handshake (RFC 6455 §4.2): validates a parsed request,
 * computes Sec-WebSocket-Accept, selects a subprotocol, collects permessage-deflate offers
 * (RFC 7692 §7) and formats the 101 or the rejection — and the client's request (§4.1), which
 * shares the field writers. It does not decide which offer to accept
 * (the deflate module does) and never allocates or does I/O. */
#include "ws/handshake.h"

#include "ws/handshake_client.h"

#include "ws/err.h"

#include <assert.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* RFC 6455 §1.3: the GUID appended to the key before hashing. */
static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
#define GUID_LEN (sizeof guid - 1)

/* SHA-1 of a then b. OpenSSL 3's SHA1() fetches the algorithm and makes a context on every call:
 * for a 60-byte input that costs twice the digest itself, so the algorithm and one context are
 * kept (per thread) and the context is reset for each digest. */
static void sha1_of(const void *a, size_t a_len, const void *b, size_t b_len,
                    unsigned char digest[SHA_DIGEST_LENGTH])
{
    static _Thread_local EVP_MD *md;
    static _Thread_local EVP_MD_CTX *ctx;
    if (!md)
        md = EVP_MD_fetch(NULL, "SHA1", NULL);
    if (!ctx)
        ctx = EVP_MD_CTX_new();
    if (!md || !ctx || !EVP_DigestInit_ex2(ctx, md, NULL) || !EVP_DigestUpdate(ctx, a, a_len) ||
        !EVP_DigestUpdate(ctx, b, b_len) || !EVP_DigestFinal_ex(ctx, digest, NULL)) {
        fprintf(stderr, "wsserver: SHA-1 failed\n");
        abort();
    }
}

void ws_handshake_accept_key(const char *key, size_t key_len, char out[WS_HANDSHAKE_ACCEPT_LEN + 1])
{
    unsigned char digest[SHA_DIGEST_LENGTH];
    sha1_of(key, key_len, guid, GUID_LEN, digest);
    /* EVP_EncodeBlock writes 4 * ceil(20 / 3) = 28 characters and a NUL. */
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* RFC 6455 §4.2.1 item 5: the key is base64 (RFC 4648 §4) of 16 bytes: 22 significant characters
 * and "==". 16 bytes leave 4 unused bits in the last character; they must be zero (RFC 4648
 * §3.5), so only the canonical encoding of some 16 bytes is accepted. */
static bool key_valid(struct ws_span key)
{
    if (key.n != 24 || key.p[22] != '=' || key.p[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++) {
        if (b64_value((unsigned char)key.p[i]) < 0)
            return false;
    }
    return (b64_value((unsigned char)key.p[21]) & 0x0f) == 0;
}

/* --- Sec-WebSocket-Extensions (RFC 6455 §9.1, RFC 7692 §7) ------------------------------- */

struct cursor {
    const char *p;
    const char *end;
};

static void skip_ows(struct cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t'))
        c->p++;
}

static bool take_token(struct cursor *c, struct ws_span *tok)
{
    const char *s = c->p;
    while (c->p < c->end && ws_http_is_tchar((unsigned char)*c->p))
        c->p++;
    *tok = (struct ws_span){s, (size_t)(c->p - s)};
    return tok->n > 0;
}

/* Reads token / quoted-string (RFC 9110 §5.6.4) into val (unescaped). A value longer than cap
 * sets *n to cap + 1: well-formed but never a valid parameter. False on a syntax error. */
static bool take_value(struct cursor *c, char *val, size_t cap, size_t *n)
{
    *n = 0;
    if (c->p < c->end && *c->p != '"') {
        struct ws_span tok;
        if (!take_token(c, &tok))
            return false;
        *n = tok.n <= cap ? tok.n : cap + 1;
        if (tok.n <= cap)
            memcpy(val, tok.p, tok.n);
        return true;
    }
    if (c->p == c->end)
        return false;
    c->p++;
    while (c->p < c->end && *c->p != '"') {
        if (*c->p == '\\') {
            c->p++;
            if (c->p == c->end)
                return false;
        }
        if (*n < cap)
            val[*n] = *c->p;
        if (*n <= cap)
            (*n)++;
        c->p++;
    }
    if (c->p == c->end)
        return false;
    c->p++;
    return true;
}

/* After a syntax error: drop the rest of the element, up to a comma outside quotes. */
static void skip_element(struct cursor *c)
{
    bool quoted = false;
    while (c->p < c->end && (quoted || *c->p != ',')) {
        if (*c->p == '"')
            quoted = !quoted;
        else if (*c->p == '\\' && quoted && c->p + 1 < c->end)
            c->p++;
        c->p++;
    }
}

/* RFC 7692 §7.1.2.1: window bits are a decimal 8..15 without leading zeros. RFC 6455 §9.1: a
 * quoted value must unescape to a token, which these digits already are. */
static int window_bits(const char *v, size_t n)
{
    if (n == 1 && (v[0] == '8' || v[0] == '9'))
        return v[0] - '0';
    if (n == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5')
        return 10 + (v[1] - '0');
    return 0;
}

/* Applies one parameter to an offer; false makes the offer invalid. RFC 7692 §7: decline an
 * offer with an unknown parameter, an invalid value or a parameter given twice. */
static bool apply_param(struct ws_deflate_offer *o, struct ws_span name, bool has_value,
                        const char *v, size_t n)
{
    if (ws_span_ieq(name, "server_no_context_takeover")) {
        /* RFC 7692 §7.1.1.1: no value. */
        if (has_value || o->server_no_context_takeover)
            return false;
        o->server_no_context_takeover = true;
    } else if (ws_span_ieq(name, "client_no_context_takeover")) {
        /* RFC 7692 §7.1.1.2: no value. */
        if (has_value || o->client_no_context_takeover)
            return false;
        o->client_no_context_takeover = true;
    } else if (ws_span_ieq(name, "server_max_window_bits")) {
        /* RFC 7692 §7.1.2.1: value required in an offer. */
        if (!has_value || o->server_max_window_bits != 0)
            return false;
        o->server_max_window_bits = window_bits(v, n);
        return o->server_max_window_bits != 0;
    } else if (ws_span_ieq(name, "client_max_window_bits")) {
        /* RFC 7692 §7.1.2.2: value optional in an offer. */
        if (o->client_max_window_bits != 0)
            return false;
        if (!has_value) {
            o->client_max_window_bits = -1;
            return true;
        }
        o->client_max_window_bits = window_bits(v, n);
        return o->client_max_window_bits != 0;
    } else {
        return false;
    }
    return true;
}

/* extension = extension-token *( OWS ";" OWS extension-param ) (RFC 6455 §9.1). Returns false
 * on a syntax error (the cursor is then somewhere inside the element). */
static bool parse_extension(struct cursor *c, bool *deflate, bool *valid,
                            struct ws_deflate_offer *o)
{
    struct ws_span name;
    if (!take_token(c, &name))
        return false;
    *deflate = ws_span_ieq(name, "permessage-deflate");
    *valid = true;
    memset(o, 0, sizeof *o);
    for (;;) {
        skip_ows(c);
        if (c->p == c->end || *c->p == ',')
            return true;
        if (*c->p != ';')
            return false;
        c->p++;
        skip_ows(c);
        struct ws_span pname;
        if (!take_token(c, &pname))
            return false;
        skip_ows(c);
        char v[4];
        size_t n = 0;
        bool has_value = c->p < c->end && *c->p == '=';
        if (has_value) {
            c->p++;
            skip_ows(c);
            if (!take_value(c, v, sizeof v, &n))
                return false;
        }
        if (*deflate && *valid)
            *valid = apply_param(o, pname, has_value, v, n);
    }
}

size_t ws_handshake_extensions(const struct ws_http_request *msg, struct ws_deflate_offer *offers,
                               size_t max, size_t *noffers)
{
    size_t others = 0;
    *noffers = 0;
    /* RFC 9110 §5.3: every Sec-WebSocket-Extensions field is part of one list. */
    for (size_t i = 0; i < msg->nheaders; i++) {
        if (!ws_span_ieq(msg->headers[i].name, "Sec-WebSocket-Extensions"))
            continue;
        struct ws_span value = msg->headers[i].value;
        struct cursor c = {value.p, value.p + value.n};
        for (;;) {
            while (c.p < c.end && (*c.p == ',' || *c.p == ' ' || *c.p == '\t'))
                c.p++;
            if (c.p == c.end)
                break;
            struct ws_deflate_offer o;
            bool deflate = false;
            bool valid = false;
            if (!parse_extension(&c, &deflate, &valid, &o)) {
                skip_element(&c);
                others++;
                continue;
            }
            if (deflate && valid && *noffers < max)
                offers[(*noffers)++] = o;
            else
                others++;
        }
    }
    return others;
}

/* --- the request check ------------------------------------------------------------------ */

static int reject(struct ws_handshake *hs, int err, int status, const char *reason)
{
    hs->status = status;
    hs->reason = reason;
    return err;
}

int ws_handshake_check(const struct ws_http_request *req, struct ws_handshake *hs)
{
    memset(hs, 0, sizeof *hs);

    /* RFC 6455 §4.2.1 item 1: an HTTP/1.1 or higher GET request. Methods are case-sensitive
     * (RFC 9110 §9.1). */
    if (!(req->method.n == 3 && memcmp(req->method.p, "GET", 3) == 0))
        return reject(hs, WS_E_HTTP_METHOD, 405, "method not allowed");
    if (req->version_minor < 1)
        return reject(hs, WS_E_HANDSHAKE, 400, "HTTP/1.1 required");

    /* RFC 6455 §4.2.1 item 2, RFC 9112 §3.2: exactly one Host field. */
    size_t hosts = ws_http_field_count(req, WS_HTTP_HOST);
    if (hosts == 0)
        return reject(hs, WS_E_HANDSHAKE, 400, "missing Host header");
    if (hosts > 1)
        return reject(hs, WS_E_HANDSHAKE, 400, "duplicate Host header");

    /* RFC 6455 §4.2.1 item 3: Upgrade contains "websocket", case-insensitively. */
    if (!ws_http_field(req, WS_HTTP_UPGRADE))
        return reject(hs, WS_E_HANDSHAKE, 400, "missing Upgrade header");
    if (!ws_http_field_has_token(req, WS_HTTP_UPGRADE, "websocket"))
        return reject(hs, WS_E_HANDSHAKE, 400, "Upgrade header must contain websocket");

    /* RFC 6455 §4.2.1 item 4: Connection contains the token "Upgrade", case-insensitively. */
    if (!ws_http_field(req, WS_HTTP_CONNECTION))
        return reject(hs, WS_E_HANDSHAKE, 400, "missing Connection header");
    if (!ws_http_field_has_token(req, WS_HTTP_CONNECTION, "upgrade"))
        return reject(hs, WS_E_HANDSHAKE, 400, "Connection header must contain upgrade");

    /* RFC 6455 §4.2.1 item 6: Sec-WebSocket-Version is 13; §4.4: any other version gets 426
     * with the versions we support (added by ws_handshake_error_response). */
    size_t versions = ws_http_field_count(req, WS_HTTP_SEC_WEBSOCKET_VERSION);
    if (versions == 0)
        return reject(hs, WS_E_HANDSHAKE, 400, "missing Sec-WebSocket-Version header");
    if (versions > 1)
        return reject(hs, WS_E_HANDSHAKE, 400, "duplicate Sec-WebSocket-Version header");
    const struct ws_span *version = ws_http_field(req, WS_HTTP_SEC_WEBSOCKET_VERSION);
    if (!(version->n == 2 && memcmp(version->p, "13", 2) == 0))
        return reject(hs, WS_E_WS_VERSION, 426, "unsupported Sec-WebSocket-Version (only 13)");

    /* RFC 6455 §4.2.1 item 5 and §11.3.1: one Sec-WebSocket-Key, base64 of 16 bytes. The same
     * key on several connections is fine (SPEC §6). */
    size_t keys = ws_http_field_count(req, WS_HTTP_SEC_WEBSOCKET_KEY);
    if (keys == 0)
        return reject(hs, WS_E_HANDSHAKE, 400, "missing Sec-WebSocket-Key header");
    if (keys > 1)
        return reject(hs, WS_E_HANDSHAKE, 400, "duplicate Sec-WebSocket-Key header");
    const struct ws_span *key = ws_http_field(req, WS_HTTP_SEC_WEBSOCKET_KEY);
    if (!key_valid(*key))
        return reject(hs, WS_E_HANDSHAKE, 400, "Sec-WebSocket-Key must be base64 of 16 bytes");

    hs->key = *key;
    ws_handshake_accept_key(key->p, key->n, hs->accept);
    if (ws_http_field_count(req, WS_HTTP_SEC_WEBSOCKET_EXTENSIONS))
        ws_handshake_extensions(req, hs->offers, WS_HANDSHAKE_MAX_OFFERS, &hs->noffers);
    hs->status = 101;
    return 0;
}

bool ws_handshake_is_upgrade(const struct ws_http_request *req)
{
    return ws_http_field_has_token(req, WS_HTTP_UPGRADE, "websocket");
}

/* --- subprotocols (RFC 6455 §4.2.2 step 5.4 /subprotocol/) ---------------------------------- */

bool ws_handshake_offers_protocol(const struct ws_http_request *req, const char *protocol,
                                  size_t len)
{
    if (!ws_http_field_count(req, WS_HTTP_SEC_WEBSOCKET_PROTOCOL))
        return false;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (!ws_span_ieq(req->headers[i].name, "Sec-WebSocket-Protocol"))
            continue;
        struct ws_span list = req->headers[i].value;
        struct ws_span t;
        while (ws_http_next_token(&list, &t)) {
            if (t.n == len && memcmp(t.p, protocol, len) == 0)
                return true;
        }
    }
    return false;
}

int ws_handshake_select_protocol(const struct ws_http_request *req, const char *const *supported,
                                 size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ws_handshake_offers_protocol(req, supported[i], strlen(supported[i])))
            return (int)i;
    }
    return -1;
}

/* --- responses --------------------------------------------------------------------------- */

/* Appends to a fixed buffer; once something does not fit, everything after is dropped. */
struct out {
    char *p;
    size_t cap;
    size_t len;
    bool full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->full || n > o->cap - o->len) {
        o->full = true;
        return;
    }
    if (n)
        memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void put_str(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_uint(struct out *o, size_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%zu", v);
    put(o, tmp, (size_t)n);
}

static size_t finish(const struct out *o)
{
    return o->full ? 0 : o->len;
}

/* Bytes that may sit in a field value without splitting the response (RFC 9110 §5.5). */
static bool field_safe(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

static bool is_token(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (!ws_http_is_tchar((unsigned char)s[i]))
            return false;
    }
    return n > 0;
}

size_t ws_handshake_response(char *out, size_t cap, const struct ws_handshake *hs,
                             const char *protocol, size_t protocol_len, const char *extensions)
{
    assert(hs->status == 101);
    /* RFC 6455 §4.1: a subprotocol is a token; anything else would split the response. */
    if (protocol && protocol_len > 0 && !is_token(protocol, protocol_len))
        return 0;
    if (extensions && !field_safe(extensions, strlen(extensions)))
        return 0;

    /* RFC 6455 §4.2.2 step 5. */
    struct out o = {out, cap, 0, false};
    put_str(&o, "HTTP/1.1 101 Switching Protocols\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                "Sec-WebSocket-Accept: ");
    put(&o, hs->accept, WS_HANDSHAKE_ACCEPT_LEN);
    put_str(&o, "\r\n");
    if (protocol && protocol_len > 0) {
        put_str(&o, "Sec-WebSocket-Protocol: ");
        put(&o, protocol, protocol_len);
        put_str(&o, "\r\n");
    }
    if (extensions && *extensions) {
        put_str(&o, "Sec-WebSocket-Extensions: ");
        put_str(&o, extensions);
        put_str(&o, "\r\n");
    }
    put_str(&o, "\r\n");
    return finish(&o);
}

/* --- the client's request (RFC 6455 §4.1) ---------------------------------------------------- */

/* True when s holds no byte that ends a line or a field (RFC 9110 §5.5); no spaces either when
 * strict (the request line and the Host value). */
static bool safe(const char *s, bool strict)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c < 0x20 && c != '\t') || c == 0x7f || (strict && (c == ' ' || c == '\t')))
            return false;
    }
    return true;
}

size_t ws_handshake_client_request(char *out, size_t cap,
                                   const struct ws_handshake_client_request *r)
{
    if (!*r->host || !safe(r->host, true) || !safe(r->target, true) || r->target[0] != '/')
        return 0;
    for (size_t i = 0; i < r->nprotocols; i++) {
        if (!is_token(r->protocols[i], strlen(r->protocols[i])))
            return 0;
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        if (!safe(r->headers[i], false))
            return 0;
    }
    struct out o = {out, cap, 0, false};
    /* RFC 6455 §4.1 items 1-2: a GET with the resource name, HTTP/1.1 */
    put_str(&o, "GET ");
    put_str(&o, r->target);
    put_str(&o, " HTTP/1.1\r\nHost: ");
    /* RFC 6455 §4.1 item 4: the port only when it is not the scheme's default */
    put_str(&o, r->host);
    if (r->port != (r->tls ? 443 : 80)) {
        char port[16];
        snprintf(port, sizeof port, ":%d", r->port);
        put_str(&o, port);
    }
    /* RFC 6455 §4.1 items 5-7, 9 */
    put_str(&o, "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ");
    put(&o, r->key, WS_HANDSHAKE_KEY_LEN);
    put_str(&o, "\r\nSec-WebSocket-Version: 13\r\n");
    if (r->nprotocols) {
        /* RFC 6455 §4.1 item 10: one field, the values in preference order */
        put_str(&o, "Sec-WebSocket-Protocol: ");
        for (size_t i = 0; i < r->nprotocols; i++) {
            if (i)
                put_str(&o, ", ");
            put_str(&o, r->protocols[i]);
        }
        put_str(&o, "\r\n");
    }
    /* RFC 7692 §7.1.2.2: client_max_window_bits without a value lets the server pick ours */
    if (r->deflate)
        put_str(&o, "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n");
    for (size_t i = 0; i < r->nheaders; i++) {
        put_str(&o, r->headers[i]);
        put_str(&o, "\r\n");
    }
    put_str(&o, "\r\n");
    return o.full ? 0 : o.len;
}

/* True when the CRLF-separated lines of headers contain a field called name. */
static bool has_field(const char *headers, const char *name)
{
    size_t n = strlen(name);
    for (const char *line = headers; line && *line;) {
        if (strncasecmp(line, name, n) == 0 && line[n] == ':')
            return true;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return false;
}

size_t ws_handshake_error_response(char *out, size_t cap, int status, const char *body,
                                   size_t body_len, const char *extra_headers)
{
    if (status < 100 || status > 999)
        return 0;
    struct out o = {out, cap, 0, false};
    put_str(&o, "HTTP/1.1 ");
    put_uint(&o, (size_t)status);
    put_str(&o, " ");
    put_str(&o, ws_http_reason(status));
    put_str(&o, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    put_uint(&o, body_len);
    put_str(&o, "\r\nConnection: close\r\n");
    /* RFC 6455 §4.4: tell the client which versions we speak. */
    if (status == 426)
        put_str(&o, "Sec-WebSocket-Version: 13\r\n");
    /* RFC 9110 §15.5.6: a 405 lists the allowed methods. */
    if (status == 405 && !(extra_headers && has_field(extra_headers, "Allow")))
        put_str(&o, "Allow: GET\r\n");
    /* RFC 9110 §10.2.3, §15.6.4: tell a refused client when to come back. */
    if (status == 503 && !(extra_headers && has_field(extra_headers, "Retry-After")))
        put_str(&o, "Retry-After: 5\r\n");
    if (extra_headers)
        put_str(&o, extra_headers);
    put_str(&o, "\r\n");
    put(&o, body, body_len);
    return finish(&o);
}
