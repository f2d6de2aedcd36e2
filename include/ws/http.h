/* Bounded HTTP/1.1 request-head parser (RFC 9112 §2-5, http.c): finds the end of the head across
 * split reads, then parses the request line and header fields into spans of the caller's buffer.
 * It never allocates. For a body, http_body.c says how the body is framed (RFC 9112 §6) and
 * decodes the chunked coding in place; reading the bytes is the caller's. http_status.c names
 * the status codes. */
#ifndef WS_HTTP_H
#define WS_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WS_HTTP_MAX_HEADERS 64

/* A span of wire bytes: not NUL-terminated. */
struct ws_span {
    const char *p;
    size_t n;
};

struct ws_http_header {
    struct ws_span name;  /* as sent; compare case-insensitively */
    struct ws_span value; /* surrounding whitespace stripped */
};

/* The fields the server looks at on every request: the parser notes where each one is, so that
 * ws_http_field and its kin find them without comparing names. */
enum ws_http_field {
    WS_HTTP_HOST,
    WS_HTTP_UPGRADE,
    WS_HTTP_CONNECTION,
    WS_HTTP_SEC_WEBSOCKET_KEY,
    WS_HTTP_SEC_WEBSOCKET_VERSION,
    WS_HTTP_SEC_WEBSOCKET_PROTOCOL,
    WS_HTTP_SEC_WEBSOCKET_EXTENSIONS,
    WS_HTTP_ORIGIN,
    WS_HTTP_USER_AGENT,
    WS_HTTP_X_FORWARDED_FOR,
    WS_HTTP_CONTENT_LENGTH,
    WS_HTTP_TRANSFER_ENCODING,
    WS_HTTP_FIELDS /* how many */
};

struct ws_http_request {
    struct ws_span method;
    struct ws_span target; /* request-target as sent: path and query */
    int version_minor;     /* HTTP/1.x */
    int status;            /* a response's status code (ws_http_parse_response), else 0 */
    struct ws_http_header headers[WS_HTTP_MAX_HEADERS];
    size_t nheaders;
    size_t head_len;     /* bytes of the head including the final CRLF CRLF */
    struct ws_span body; /* the body, once the caller has read it (the parser leaves it empty) */
    /* per enum ws_http_field, set by the parser: 1 + the index of the first such field in
     * headers (0: none), and how many there are */
    uint8_t field_first[WS_HTTP_FIELDS];
    uint8_t field_count[WS_HTTP_FIELDS];
};

/* Parses a response head (RFC 9112 §4: status-line, then fields) at buf[0..len) like
 * ws_http_parse: resp->status holds the code (100..999), method and target stay empty, the reason
 * phrase is not kept. Same returns; a status line that is not "HTTP/1.x NNN" is WS_E_HTTP_BAD
 * (WS_E_HTTP_VERSION for another major version). */
int ws_http_parse_response(const char *buf, size_t len, size_t max_head_bytes, size_t *scanned,
                           struct ws_http_request *resp);

/* Parses the request head at buf[0..len). *scanned carries how far an earlier call already
 * searched for the end of the head (start it at 0), so feeding a head one byte at a time costs
 * linear time. Returns:
 *   0                    complete: *req filled, req->head_len bytes used;
 *   WS_E_AGAIN           incomplete and still within max_head_bytes;
 *   WS_E_HTTP_TOO_LARGE  the head is longer than max_head_bytes or has too many fields (431);
 *   WS_E_HTTP_BAD        malformed request line or field, obs-fold, bare LF, NUL, bad name (400);
 *   WS_E_HTTP_VERSION    not HTTP/1.x (505). */
int ws_http_parse(const char *buf, size_t len, size_t max_head_bytes, size_t *scanned,
                  struct ws_http_request *req);

/* The value of the first field named name (case-insensitive), or NULL. */
const struct ws_span *ws_http_header(const struct ws_http_request *req, const char *name);

/* Number of fields named name (case-insensitive). */
size_t ws_http_header_count(const struct ws_http_request *req, const char *name);

/* True when any field named name holds token in its comma-separated list (case-insensitive). */
bool ws_http_header_has_token(const struct ws_http_request *req, const char *name,
                              const char *token);

/* The known fields of a request filled by ws_http_parse or ws_http_parse_response (not one put
 * together by hand: use ws_http_header there). The value of the first field f, or NULL. */
const struct ws_span *ws_http_field(const struct ws_http_request *req, enum ws_http_field f);

/* The name of f as it is usually written ("Sec-WebSocket-Key"). */
const char *ws_http_field_name(enum ws_http_field f);

/* Number of fields f in a parsed request. */
size_t ws_http_field_count(const struct ws_http_request *req, enum ws_http_field f);

/* True when any field f of a parsed request holds token in its comma-separated list
 * (case-insensitive). */
bool ws_http_field_has_token(const struct ws_http_request *req, enum ws_http_field f,
                             const char *token);

/* Iterates a comma-separated list: takes the next element off *list (trimmed of whitespace,
 * empty elements skipped) into *token. False when the list is exhausted. */
bool ws_http_next_token(struct ws_span *list, struct ws_span *token);

/* True when span equals the NUL-terminated s, ignoring ASCII case. */
bool ws_span_ieq(struct ws_span span, const char *s);

/* True when c may appear in a token (RFC 9110 §5.6.2 tchar): method, field name, list element. */
bool ws_http_is_tchar(unsigned char c);

/* ---- http_body.c: a body's framing and the in-place chunked decoder ---- */

/* How a request's body is framed. */
struct ws_http_framing {
    bool chunked;    /* Transfer-Encoding: chunked (the length is not known in advance) */
    uint64_t length; /* Content-Length, or 0 */
};

/* State of the in-place chunked decoder; zero it (or ws_http_chunked_init) before the body. */
struct ws_http_chunked {
    int state;
    uint64_t remaining; /* bytes left in the current chunk, or the size being read */
    unsigned digits;    /* hex digits of the size so far */
    uint64_t total;     /* bytes of the coding consumed, over every call */
    size_t in;          /* bytes of the buffer consumed */
    size_t out;         /* decoded bytes at the front of the buffer */
};

/* How req's body is framed (RFC 9112 §6.1-6.3): Transfer-Encoding chunked, a Content-Length, or
 * none. WS_E_HTTP_BAD for a Content-Length that is not a number or that repeats with different
 * values, for both Transfer-Encoding and Content-Length (a request smuggling vector, §6.1), and
 * for a transfer coding other than chunked alone. req comes from ws_http_parse or
 * ws_http_parse_response. */
int ws_http_framing(const struct ws_http_request *req, struct ws_http_framing *out);

void ws_http_chunked_init(struct ws_http_chunked *d);

/* Decodes the chunked body in buf[0..len) in place (RFC 9112 §7.1): the data of the chunks moves
 * to the front of buf, d->out bytes of it so far; call again with the same buf after appending
 * more bytes. Chunk extensions and trailer fields are skipped. Returns 0 when the last chunk and
 * the trailer are done (d->in bytes of buf were the body; anything after is not), WS_E_AGAIN for
 * more, WS_E_HTTP_BAD for a malformed coding, WS_E_HTTP_BODY_TOO_LARGE once the data would
 * exceed max_bytes or the coding (sizes, extensions, trailers) passes 8 × max_bytes + 64 KiB.
 * Every byte given is consumed unless it completes or fails: on WS_E_AGAIN, d->in == len. */
int ws_http_chunked_decode(struct ws_http_chunked *d, uint8_t *buf, size_t len, uint64_t max_bytes);

/* The value of hex digit c (0-9, a-f, A-F), or -1. */
int ws_http_hexval(int c);

/* ---- http_status.c: reason phrases ---- */

/* Reason phrase for an HTTP status ("Bad Request"), "Unknown" for others. */
const char *ws_http_reason(int status);

#endif
