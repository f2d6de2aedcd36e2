/* Client side of the opening handshake (RFC 6455 §4.1): takes the URL apart, makes the key and
 * checks the answer, so the client role refuses exactly what the RFC says a client must refuse.
 * The request itself is written by handshake.c beside the server's answers (they share the
 * field writers). The random nonce comes from the caller; no I/O, no allocation. */
#include "ws/handshake_client.h"

#include "ws/err.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

void ws_handshake_client_key(const uint8_t nonce[16], char key[WS_HANDSHAKE_KEY_LEN + 1])
{
    /* EVP_EncodeBlock writes 4 * ceil(16 / 3) = 24 characters and a NUL. */
    EVP_EncodeBlock((unsigned char *)key, nonce, 16);
}

/* --- ws:// and wss:// URLs (RFC 6455 §3) ------------------------------------------------ */

int ws_url_parse(const char *url, struct ws_url *u, const char **why)
{
    memset(u, 0, sizeof *u);
    const char *p;
    if (strncasecmp(url, "ws://", 5) == 0) {
        p = url + 5;
    } else if (strncasecmp(url, "wss://", 6) == 0) {
        u->tls = true;
        p = url + 6;
    } else {
        *why = "the URL must start with ws:// or wss://";
        return WS_E_INVAL;
    }
    size_t alen = strcspn(p, "/?#");
    const char *auth_end = p + alen;
    /* RFC 6455 §3: no user information in a WebSocket URI */
    if (memchr(p, '@', alen)) {
        *why = "user information in a ws:// URL is not allowed";
        return WS_E_INVAL;
    }
    const char *host_end;
    const char *port = NULL;
    if (*p == '[') {
        const char *rb = memchr(p, ']', alen);
        if (!rb) {
            *why = "unterminated [IPv6] host";
            return WS_E_INVAL;
        }
        host_end = rb + 1;
        if (host_end < auth_end && *host_end != ':') {
            *why = "bad host";
            return WS_E_INVAL;
        }
    } else {
        host_end = memchr(p, ':', alen);
        if (!host_end)
            host_end = auth_end;
    }
    if (host_end < auth_end)
        port = host_end + 1;
    size_t hlen = (size_t)(host_end - p);
    if (hlen == 0 || hlen >= sizeof u->host) {
        *why = hlen ? "the host is too long" : "the URL has no host";
        return WS_E_INVAL;
    }
    memcpy(u->host, p, hlen);
    u->port = u->tls ? 443 : 80;
    if (port) {
        long v = 0;
        if (port == auth_end) {
            *why = "empty port";
            return WS_E_INVAL;
        }
        for (const char *q = port; q < auth_end; q++) {
            if (*q < '0' || *q > '9' || (v = v * 10 + (*q - '0')) > 65535) {
                *why = "the port must be a number 1-65535";
                return WS_E_INVAL;
            }
        }
        if (v == 0) {
            *why = "the port must be a number 1-65535";
            return WS_E_INVAL;
        }
        u->port = (int)v;
    }
    /* RFC 6455 §3: fragment identifiers must not be used */
    if (strchr(auth_end, '#')) {
        *why = "a ws:// URL has no fragment (#)";
        return WS_E_INVAL;
    }
    int n = snprintf(u->target, sizeof u->target, "%s%s", *auth_end == '/' ? "" : "/", auth_end);
    if (n < 0 || (size_t)n >= sizeof u->target) {
        *why = "the path is too long";
        return WS_E_INVAL;
    }
    return 0;
}

/* --- the answer (RFC 6455 §4.1) ------------------------------------------------------- */

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
