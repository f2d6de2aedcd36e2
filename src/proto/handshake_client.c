/* Client side of the opening handshake (RFC 6455 §4.1): builds the upgrade request and checks
 * the answer, so the client role refuses exactly what the RFC says a client must refuse. The
 * random nonce comes from the caller; this file does no I/O and never allocates. */
#include "ws/handshake_client.h"

#include "ws/err.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

void ws_handshake_client_key(const uint8_t nonce[16], char key[WS_HANDSHAKE_KEY_LEN + 1])
{
    /* EVP_EncodeBlock writes 4 * ceil(16 / 3) = 24 characters and a NUL. */
    EVP_EncodeBlock((unsigned char *)key, nonce, 16);
}

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
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void put_str(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

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

static bool is_token(const char *s)
{
    for (const char *p = s; *p; p++) {
        if (!ws_http_is_tchar((unsigned char)*p))
            return false;
    }
    return *s != '\0';
}

size_t ws_handshake_client_request(char *out, size_t cap,
                                   const struct ws_handshake_client_request *r)
{
    if (!*r->host || !safe(r->host, true) || !safe(r->target, true) || r->target[0] != '/')
        return 0;
    for (size_t i = 0; i < r->nprotocols; i++) {
        if (!is_token(r->protocols[i]))
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

static int refuse(struct ws_handshake_client_result *out, const char *reason)
{
    out->reason = reason;
    return WS_E_HANDSHAKE;
}

/* RFC 6455 §4.1 (the server's answer) item 6: the subprotocol must be one the client offered. */
static int check_protocol(const struct ws_http_request *resp, const char *const *protocols,
                          size_t nprotocols, struct ws_handshake_client_result *out)
{
    size_t n = ws_http_header_count(resp, "Sec-WebSocket-Protocol");
    if (n == 0)
        return 0;
    const struct ws_span *v = ws_http_header(resp, "Sec-WebSocket-Protocol");
    if (n > 1 || memchr(v->p, ',', v->n))
        return refuse(out, "the server answered more than one subprotocol");
    for (size_t i = 0; i < nprotocols; i++) {
        if (strlen(protocols[i]) == v->n && memcmp(protocols[i], v->p, v->n) == 0) {
            out->protocol = *v;
            return 0;
        }
    }
    return refuse(out, "the server answered a subprotocol the client did not offer");
}

/* RFC 6455 §4.1 item 5 and RFC 7692 §7.1: only the permessage-deflate we offered, once, with
 * parameters valid in an answer. Our parameters are the mirror of the server's: the client's
 * window and context takeover are what our compressor uses. */
static int check_extensions(const struct ws_http_request *resp, bool offered,
                            struct ws_handshake_client_result *out)
{
    struct ws_deflate_offer ans[2];
    size_t n = 0;
    size_t others = ws_handshake_extensions(resp, ans, 2, &n);
    if (n == 0 && others == 0)
        return 0;
    if (!offered)
        return refuse(out, "the server answered an extension the client did not offer");
    if (others > 0)
        return refuse(out, "the server answered an unknown extension or invalid parameters");
    if (n > 1)
        return refuse(out, "the server answered permessage-deflate more than once");
    /* RFC 7692 §7.1.2.2: in an answer client_max_window_bits carries a value */
    if (ans[0].client_max_window_bits < 0)
        return refuse(out, "client_max_window_bits without a value in the answer");
    struct ws_deflate_config defaults;
    ws_deflate_config_init(&defaults);
    struct ws_deflate_params *p = &out->params;
    p->server_no_context_takeover = ans[0].client_no_context_takeover;
    p->client_no_context_takeover = ans[0].server_no_context_takeover;
    int ours = ans[0].client_max_window_bits ? ans[0].client_max_window_bits : 15;
    /* zlib cannot deflate with a 256-byte window: then we send every message uncompressed, which
     * RFC 7692 §6 allows, and the window of our idle compressor does not matter */
    p->server_max_window_bits =
        ours < WS_DEFLATE_MIN_SERVER_WINDOW_BITS ? WS_DEFLATE_MIN_SERVER_WINDOW_BITS : ours;
    p->client_max_window_bits = ans[0].server_max_window_bits ? ans[0].server_max_window_bits : 15;
    p->mem_level = defaults.mem_level;
    p->level = defaults.level;
    p->compress_min_size =
        ours < WS_DEFLATE_MIN_SERVER_WINDOW_BITS ? SIZE_MAX : defaults.compress_min_size;
    out->deflate = true;
    return 0;
}

int ws_handshake_client_check(const struct ws_http_request *resp, const char *key,
                              const char *const *protocols, size_t nprotocols, bool deflate,
                              struct ws_handshake_client_result *out)
{
    memset(out, 0, sizeof *out);
    /* RFC 6455 §4.1 (the server's answer) item 1: anything but 101 ends the handshake */
    if (resp->status != 101)
        return refuse(out, "the server did not answer 101 Switching Protocols");
    /* item 2 */
    if (!ws_http_header_has_token(resp, "Upgrade", "websocket"))
        return refuse(out, "the answer's Upgrade header is not websocket");
    /* item 3 */
    if (!ws_http_header_has_token(resp, "Connection", "upgrade"))
        return refuse(out, "the answer's Connection header does not contain upgrade");
    /* item 4: base64(SHA-1(key + GUID)), compared exactly */
    char expect[WS_HANDSHAKE_ACCEPT_LEN + 1];
    ws_handshake_accept_key(key, WS_HANDSHAKE_KEY_LEN, expect);
    const struct ws_span *accept = ws_http_header(resp, "Sec-WebSocket-Accept");
    if (!accept || ws_http_header_count(resp, "Sec-WebSocket-Accept") != 1)
        return refuse(out, "the answer has no single Sec-WebSocket-Accept");
    if (accept->n != WS_HANDSHAKE_ACCEPT_LEN || memcmp(accept->p, expect, accept->n) != 0)
        return refuse(out, "Sec-WebSocket-Accept does not match the key");
    int rc = check_extensions(resp, deflate, out);
    if (rc < 0)
        return rc;
    return check_protocol(resp, protocols, nprotocols, out);
}
