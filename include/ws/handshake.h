/* The server side of the WebSocket opening handshake (RFC 6455 §4.2): checks a parsed request,
 * computes Sec-WebSocket-Accept, picks a subprotocol, parses permessage-deflate offers
 * (RFC 7692 §7) and writes the 101 or the rejection response. Pure: no I/O. */
#ifndef WS_HANDSHAKE_H
#define WS_HANDSHAKE_H

#include "ws/http.h"

#include <stdbool.h>
#include <stddef.h>

#define WS_HANDSHAKE_ACCEPT_LEN 28 /* base64 of a 20-byte SHA-1 */
#define WS_HANDSHAKE_MAX_OFFERS 8

/* One permessage-deflate offer from Sec-WebSocket-Extensions (RFC 7692 §7.1). */
struct ws_deflate_offer {
    bool server_no_context_takeover;
    bool client_no_context_takeover;
    int server_max_window_bits; /* 0: absent, else 8..15 */
    int client_max_window_bits; /* 0: absent, -1: present without a value, else 8..15 */
};

struct ws_handshake {
    int status;         /* 101 when acceptable, else the status to answer */
    const char *reason; /* static one-line reason for a rejection, NULL on success */
    char accept[WS_HANDSHAKE_ACCEPT_LEN + 1]; /* NUL-terminated */
    struct ws_span key;
    struct ws_deflate_offer offers[WS_HANDSHAKE_MAX_OFFERS]; /* valid offers, client's order */
    size_t noffers;
};

/* Checks req against RFC 6455 §4.2.1 and SPEC §3. Returns 0 with hs->status 101 and hs->accept
 * set, or a WS_E_* with hs->status and hs->reason: WS_E_HTTP_METHOD (405, not GET),
 * WS_E_HANDSHAKE (400: not HTTP/1.1+, malformed, missing or repeated headers, bad key) or
 * WS_E_WS_VERSION (426, Sec-WebSocket-Version other than 13). Also parses permessage-deflate offers
 * (invalid offers are skipped, not fatal). hs may point into req's buffer. req comes from
 * ws_http_parse (it finds the fields through ws_http_field). */
int ws_handshake_check(const struct ws_http_request *req, struct ws_handshake *hs);

/* Parses every Sec-WebSocket-Extensions field of msg (a request or a response; RFC 6455 §9.1):
 * the valid permessage-deflate elements go to offers[0..max) in order (*noffers of them). Returns
 * how many other elements there were: other extensions, permessage-deflate elements with
 * unknown, repeated or invalid parameters (RFC 7692 §7), syntax errors, and offers past max. */
size_t ws_handshake_extensions(const struct ws_http_request *msg, struct ws_deflate_offer *offers,
                               size_t max, size_t *noffers);

/* True when req asks for a WebSocket upgrade at all (Upgrade: websocket present), so a plain
 * GET can be routed elsewhere. req comes from ws_http_parse. */
bool ws_handshake_is_upgrade(const struct ws_http_request *req);

/* Writes base64(SHA-1(key + GUID)) and a NUL into out (RFC 6455 §4.2.2 step 5.4). */
void ws_handshake_accept_key(const char *key, size_t key_len,
                             char out[WS_HANDSHAKE_ACCEPT_LEN + 1]);

/* Picks the subprotocol: the first of supported[0..n) (server preference order) that the client
 * offered in any Sec-WebSocket-Protocol field. Returns its index, or -1 when none matches. req
 * comes from ws_http_parse. */
int ws_handshake_select_protocol(const struct ws_http_request *req, const char *const *supported,
                                 size_t n);

/* True when the client offered protocol (exact, case-sensitive match, RFC 6455 §4.1). req comes
 * from ws_http_parse. */
bool ws_handshake_offers_protocol(const struct ws_http_request *req, const char *protocol,
                                  size_t len);

/* Writes the 101 response into out (cap bytes; not NUL-terminated) for an accepted hs. protocol
 * (NULL or empty: none) and extensions (NULL or "": none; the Sec-WebSocket-Extensions value)
 * are added when set. Returns the length, or 0 when cap is too small, protocol is not a token or
 * extensions holds control characters (either would split the response). */
size_t ws_handshake_response(char *out, size_t cap, const struct ws_handshake *hs,
                             const char *protocol, size_t protocol_len, const char *extensions);

/* Writes an error response (not NUL-terminated) with body as its text/plain body and
 * Connection: close; 426 adds Sec-WebSocket-Version: 13, 405 adds Allow: GET and 503 adds
 * Retry-After: 5 unless extra_headers has that field. extra_headers (may be NULL) is inserted
 * verbatim (each line CRLF-terminated). Returns the length, or 0 when cap is too small or
 * status is not three digits. */
size_t ws_handshake_error_response(char *out, size_t cap, int status, const char *body,
                                   size_t body_len, const char *extra_headers);

#endif
