/* One HTTP request's bytes: the head through the http parser, then the body as its framing says
 * (RFC 9112 §6). Pure: it buffers and decodes, the caller reads the socket. */
#include "ws/request.h"

#include "ws/err.h"
#include "ws/handshake.h"

#include <string.h>

void ws_request_init(struct ws_request *r)
{
    memset(r, 0, sizeof(*r));
    ws_buf_init(&r->in);
}

void ws_request_reset(struct ws_request *r)
{
    ws_buf_reset(&r->in);
    ws_request_init(r);
}

bool ws_request_head(const struct ws_request *r, struct ws_http_request *req)
{
    if (!r->head_len)
        return false;
    size_t scanned = 0;
    /* the head never moves once complete: parsing it again gives spans into the buffer */
    return ws_http_parse((const char *)r->in.data, r->head_len, r->head_len, &scanned, req) == 0;
}

bool ws_request_complete(const struct ws_request *r, struct ws_http_request *req)
{
    if (!ws_request_head(r, req))
        return false;
    size_t len = r->framing.chunked ? r->chunked.out : (size_t)r->framing.length;
    if (r->framing.chunked || len)
        req->body = (struct ws_span){(const char *)r->in.data + r->head_len, len};
    return true;
}

/* The body so far; 0 when it is complete. */
static int read_body(struct ws_request *r, const struct ws_request_limits *lim,
                     struct ws_http_request *req)
{
    uint8_t *p = r->in.data + r->head_len;
    size_t have = r->in.len - r->head_len;
    if (r->framing.chunked) {
        int rc = ws_http_chunked_decode(&r->chunked, p, have, lim->max_body_bytes);
        if (rc == WS_E_AGAIN) {
            /* the decoder took every byte: keep only the decoded data, so the buffer holds at
             * most max_body_bytes however the coding is split */
            r->in.len = r->head_len + r->chunked.out;
            r->chunked.in = r->chunked.out;
            return WS_E_AGAIN;
        }
        if (rc < 0)
            return rc;
    } else if (have < (size_t)r->framing.length) {
        return WS_E_AGAIN;
    }
    return ws_request_complete(r, req) ? 0 : WS_E_HTTP_BAD;
}

int ws_request_feed(struct ws_request *r, const uint8_t *data, size_t len,
                    const struct ws_request_limits *lim, struct ws_http_request *req)
{
    size_t cap =
        (r->head_len ? r->head_len + lim->max_body_bytes : lim->max_head_bytes) + lim->slack;
    size_t room = cap > r->in.len ? cap - r->in.len : 0;
    ws_buf_append(&r->in, data, len < room ? len : room);
    if (r->head_len)
        return read_body(r, lim, req);
    int rc =
        ws_http_parse((const char *)r->in.data, r->in.len, lim->max_head_bytes, &r->scanned, req);
    if (rc < 0)
        return rc;
    r->head_len = req->head_len;
    if (ws_handshake_is_upgrade(req))
        return 0;
    if ((rc = ws_http_framing(req, &r->framing)) < 0)
        return rc;
    if (!r->framing.chunked && !r->framing.length)
        return 0;
    if (r->framing.length > lim->max_body_bytes)
        return WS_E_HTTP_BODY_TOO_LARGE;
    return read_body(r, lim, req);
}
