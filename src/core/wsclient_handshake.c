/* The server's answer to the client's upgrade: the head parsed, a 101 checked (RFC 6455 §4.1)
 * and the session set up in the client role, or a refusal's status and body read to report. It
 * writes no request (wsclient.c sends the one handshake_client.c built) and no frames. */
#include "ws/wsclient.h"

#include "ws/clock.h"
#include "ws/deflate.h"
#include "ws/err.h"
#include "ws/handshake_client.h"
#include "ws/http.h"
#include "ws/log.h"
#include "ws/session.h"

#include <stdio.h>
#include <string.h>

#define MAX_HEAD_BYTES 16384
#define MAX_BODY_BYTES 65536 /* of a refusal: what the caller gets back */

/* ---- the handshake ---- */

static void opened(struct ws_client *c, const struct ws_handshake_client_result *hr)
{
    snprintf(c->protocol, sizeof c->protocol, "%.*s", (int)hr->protocol.n,
             hr->protocol.n ? hr->protocol.p : "");
    ws_session_init(&c->session, c->max_message_bytes);
    ws_session_set_client(&c->session);
    c->session_ready = true;
    if (hr->deflate) {
        ws_deflate_init(&c->deflate, &hr->params, NULL);
        ws_session_set_deflate(&c->session, &c->deflate);
        c->deflate_on = true;
    }
    ws_timer_stop(c->loop, &c->timer);
    c->state = WS_CLIENT_OPEN;
    ws_client_count_result(c, WS_STATS_WSCLIENT_OK);
    if (c->stats)
        c->stats->wsclient_open++;
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_INFO, "wsclient_open");
    ws_log_cstr(&l, "url", c->log_url);
    if (c->protocol[0])
        ws_log_cstr(&l, "protocol", c->protocol);
    if (c->deflate_on)
        ws_log_cstr(&l, "compression", "permessage-deflate");
    ws_log_end(&l);
}

/* The refusal's body is complete (or the connection ended): report status and body. */
void ws_client_refused(struct ws_client *c, const char *err)
{
    const uint8_t *body = c->head.data + c->body_at;
    size_t len = c->head.len - c->body_at;
    if (c->framing.chunked)
        len = c->chunked.out;
    else if (c->framing.length && len > c->framing.length)
        len = (size_t)c->framing.length;
    char msg[96];
    snprintf(msg, sizeof msg, "the server refused the upgrade with status %d", c->resp.status);
    struct ws_client_end e = {
        .status = c->resp.status, .body = body, .body_len = len, .err = err ? err : msg};
    ws_client_finish(c, &e);
}

/* Bytes of the refusal's body arrived; true when it is complete. */
static bool body_complete(struct ws_client *c)
{
    size_t have = c->head.len - c->body_at;
    if (c->framing.chunked) {
        int rc =
            ws_http_chunked_decode(&c->chunked, c->head.data + c->body_at, have, MAX_BODY_BYTES);
        return rc != WS_E_AGAIN;
    }
    if (c->framing.length)
        return have >= c->framing.length || have >= MAX_BODY_BYTES;
    return have >= MAX_BODY_BYTES;
}

/* The answer's head is complete in c->head. Returns false when c ended. */
static bool on_head(struct ws_client *c)
{
    if (c->resp.status != 101) {
        c->body_at = c->resp.head_len;
        if (ws_http_framing(&c->resp, &c->framing) < 0)
            memset(&c->framing, 0, sizeof c->framing);
        ws_http_chunked_init(&c->chunked);
        /* RFC 9110 §6.4.1: 1xx, 204 and 304 have no body */
        bool none = c->resp.status < 200 || c->resp.status == 204 || c->resp.status == 304 ||
                    (!c->framing.chunked && c->framing.length == 0 &&
                     ws_http_header(&c->resp, "Content-Length"));
        c->state = WS_CLIENT_BODY;
        if (none || body_complete(c)) {
            ws_client_refused(c, NULL);
            return false;
        }
        return true;
    }
    struct ws_handshake_client_result hr;
    if (ws_handshake_client_check(&c->resp, c->key, (const char *const *)c->protocols,
                                  c->nprotocols, c->compression, &hr) < 0) {
        ws_client_fail(c, hr.reason, false);
        return false;
    }
    opened(c, &hr);
    c->depth++;
    c->ops->open(c->ud, c);
    c->depth--;
    if (c->free_pending || c->state == WS_CLIENT_ENDED) {
        if (c->free_pending && c->depth == 0)
            ws_client_free(c);
        return false;
    }
    /* frames the server sent right behind its answer */
    size_t rest = c->head.len - c->resp.head_len;
    if (rest) {
        memmove(c->rbuf, c->head.data + c->resp.head_len, rest);
        ws_buf_reset(&c->head);
        return ws_client_feed(c, c->rbuf, rest);
    }
    ws_buf_reset(&c->head);
    return true;
}

/* Handshake bytes arrived. Returns false when c ended. */
bool ws_client_handshake_bytes(struct ws_client *c, const uint8_t *p, size_t n)
{
    ws_buf_append(&c->head, p, n);
    if (c->state == WS_CLIENT_BODY) {
        if (body_complete(c)) {
            ws_client_refused(c, NULL);
            return false;
        }
        return true;
    }
    int rc = ws_http_parse_response((const char *)c->head.data, c->head.len, MAX_HEAD_BYTES,
                                    &c->scanned, &c->resp);
    if (rc == WS_E_AGAIN)
        return true;
    if (rc < 0) {
        ws_client_fail(c,
                       rc == WS_E_HTTP_TOO_LARGE ? "the server's answer head is too large"
                                                 : "the server's answer is not HTTP/1.1",
                       false);
        return false;
    }
    return on_head(c);
}
