/* The client side of the WebSocket opening handshake (RFC 6455 §4.1): the key, the upgrade
 * request, and the checks on the server's answer (status, Upgrade, Connection,
 * Sec-WebSocket-Accept, the subprotocol and the extensions, RFC 7692 for permessage-deflate),
 * and ws:// URLs. Pure: the caller supplies the random bytes and does the I/O. */
#ifndef WS_HANDSHAKE_CLIENT_H
#define WS_HANDSHAKE_CLIENT_H

#include "ws/deflate.h"
#include "ws/handshake.h"
#include "ws/http.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WS_HANDSHAKE_KEY_LEN 24 /* base64 of 16 bytes */

/* A ws:// or wss:// URL taken apart (RFC 6455 §3). */
struct ws_url {
    bool tls;
    char host[256]; /* as written, an IPv6 address with its brackets */
    int port;
    char target[4096]; /* path and query, "/" at least */
};

/* Takes url (NUL-terminated) apart: 0, or WS_E_INVAL with a static reason in *why (not ws:// or
 * wss://, no host, user information or a fragment (RFC 6455 §3), a bad port, too long). */
int ws_url_parse(const char *url, struct ws_url *u, const char **why);

/* What the upgrade request says. Pointers are read during the call only. */
struct ws_handshake_client_request {
    const char *host;             /* as in the URL: a name, an IPv4 address or "[v6]" */
    int port;                     /* added to Host unless it is the scheme's default */
    bool tls;                     /* wss: the default port is 443, else 80 */
    const char *target;           /* path and query, "/" at least */
    const char *key;              /* WS_HANDSHAKE_KEY_LEN characters (ws_handshake_client_key) */
    const char *const *protocols; /* subprotocols offered, in preference order */
    size_t nprotocols;
    bool deflate;               /* offer permessage-deflate */
    const char *const *headers; /* extra "Name: value" lines */
    size_t nheaders;
};

/* What the checks found in an accepted answer. */
struct ws_handshake_client_result {
    const char *reason;      /* static one-line reason when the answer is refused */
    struct ws_span protocol; /* the subprotocol the server picked (into the response), or empty */
    bool deflate;            /* permessage-deflate was agreed */
    struct ws_deflate_params params; /* then: our side's parameters (see ws_deflate_init) */
};

/* Writes the Sec-WebSocket-Key for 16 random bytes (RFC 6455 §4.1 item 7: a fresh random nonce
 * per connection, base64-encoded) and a NUL into key. */
void ws_handshake_client_key(const uint8_t nonce[16], char key[WS_HANDSHAKE_KEY_LEN + 1]);

/* Writes the upgrade request (RFC 6455 §4.1 items 1-12; in handshake.c) into out (cap bytes; not
 * NUL-terminated). Returns its length, or 0 when cap is too small, a subprotocol is not a token
 * (RFC 6455 §4.1 item 10), or the host, target or an extra header holds a byte that would split
 * the request (a control character, or a space in the host or target). */
size_t ws_handshake_client_request(char *out, size_t cap,
                                   const struct ws_handshake_client_request *r);

/* Checks the server's answer resp (parsed by ws_http_parse_response) to a request made with key,
 * protocols[0..nprotocols) and deflate (what the request offered). RFC 6455 §4.1: the status is
 * 101, Upgrade is websocket, Connection holds upgrade, Sec-WebSocket-Accept is the one expected
 * for key; at most one subprotocol, one that was offered; no extension that was not offered, and
 * a permessage-deflate answer with valid parameters (RFC 7692 §7.1). Returns 0 with *out filled,
 * or WS_E_HANDSHAKE with out->reason. out->protocol points into resp's buffer. */
int ws_handshake_client_check(const struct ws_http_request *resp, const char *key,
                              const char *const *protocols, size_t nprotocols, bool deflate,
                              struct ws_handshake_client_result *out);

#endif
