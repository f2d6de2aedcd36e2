/* Reading one HTTP request as its bytes arrive: the head (at most max_head_bytes), then the body
 * its framing announces (Content-Length or chunked, at most max_body_bytes, the chunked coding
 * decoded in place). An upgrade request has no body: bytes after its head are WebSocket frames
 * and stay in the buffer for the caller. Buffering and limits only; no I/O. */
#ifndef WS_REQUEST_H
#define WS_REQUEST_H

#include "ws/buf.h"
#include "ws/http.h"

#include <stddef.h>

struct ws_request_limits {
    size_t max_head_bytes; /* 431 beyond */
    size_t max_body_bytes; /* 413 beyond */
    size_t slack;          /* bytes kept past a limit (one read), enough to see it is passed */
};

struct ws_request {
    struct ws_buf in; /* the head, then the body (decoded), or the first frame bytes */
    size_t scanned;   /* head bytes searched for its end */
    size_t head_len;  /* 0 until the head is complete */
    struct ws_http_framing framing;
    struct ws_http_chunked chunked;
};

void ws_request_init(struct ws_request *r);

/* Frees the buffer; r may be used again after ws_request_init. */
void ws_request_reset(struct ws_request *r);

/* Takes len more bytes, at most slack at a time (bytes beyond the limits plus slack are not
 * kept). Returns 0 once the
 * request is complete: *req is its head with req->body set (spans into r->in, valid until the
 * next call); for an upgrade the bytes after the head are frames, in r->in after req->head_len.
 * WS_E_AGAIN while more is needed. Otherwise the error that answers it: WS_E_HTTP_BAD,
 * WS_E_HTTP_TOO_LARGE, WS_E_HTTP_VERSION, WS_E_HTTP_BODY_TOO_LARGE. */
int ws_request_feed(struct ws_request *r, const uint8_t *data, size_t len,
                    const struct ws_request_limits *lim, struct ws_http_request *req);

/* The head, when it is complete (also after an error in the body): true and *req filled. */
bool ws_request_head(const struct ws_request *r, struct ws_http_request *req);

/* The complete request again, head and body (after ws_request_feed returned 0): true and *req
 * filled, with spans into r->in as they are now. */
bool ws_request_complete(const struct ws_request *r, struct ws_http_request *req);

#endif
