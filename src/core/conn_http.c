/* A connection's HTTP phase: the request read (head, then body) under its limits, the front's
 * decision carried out (an answer and the close, or the 101 and the open), and the decisions the
 * app gives later. What to answer is the front's business (front.c), not this file's. */
#include "ws/conn.h"

#include "ws/clock.h"
#include "ws/connlog.h"
#include "ws/err.h"
#include "ws/front.h"
#include "ws/handshake.h"
#include "ws/http.h"
#include "ws/request.h"

#include <stdlib.h>
#include <string.h>

/* The path of most requests, shared instead of copied (c->path is never written through). */
static char root_path[] = "/";

/* The request reader is needed only while CONNECTING: an open connection holds none. */
static void free_request(struct ws_conn *c)
{
    if (c->request) {
        ws_request_reset(c->request);
        free(c->request);
        c->request = NULL;
    }
}

/* Sends the front's answer to req (NULL: unreadable), then closes: the one response a plain
 * request gets. */
static void answer(struct ws_conn *c, const struct ws_front_reply *r,
                   const struct ws_http_request *req)
{
    if (r->refused) {
        if (c->ip_counted) {
            /* a refused socket only lingers for its answer: it holds no per-address slot */
            ws_env_ip_count(c->env, &c->peer.sa, -1);
            c->ip_counted = false;
        }
        ws_stats_count_refusal(c->env->stats, r->status);
    } else {
        c->env->stats->http_requests_total++;
    }
    ws_outq_append(&c->wire.out, &c->env->pool, r->response.data, r->response.len);
    ws_connlog_access(c, r->status, r->reason[0] ? r->reason : NULL, req, r->response.len);
    free_request(c);
    ws_conn_set_state(c, WS_CONN_CLOSING);
    ws_conn_rearm(c);
    ws_conn_want_flush(c);
}

/* Sends the 101 and opens the connection. */
static void open_ws(struct ws_conn *c, struct ws_front_reply *r, const struct ws_http_request *req)
{
    struct ws_env *env = c->env;
    ws_outq_append(&c->wire.out, &env->pool, r->response.data, r->response.len);
    c->protocol = r->protocol;
    r->protocol = NULL;
    if (r->deflate) {
        struct ws_deflate *d = ws_xcalloc(1, sizeof(*d)); /* owned through the session */
        ws_deflate_init(d, &r->params, env->deflate_shared);
        ws_session_set_deflate(&c->session, d);
    }
    ws_conn_set_state(c, WS_CONN_OPEN);
    env->nupgraded++;
    c->opened = true;
    c->clock.last_read = c->clock.last_message = ws_clock_now(env->loop);
    ws_conn_rearm(c);
    ws_conn_want_flush(c);
    env->stats->upgrades_total++;
    ws_connlog_access(c, 101, NULL, req, r->response.len);
    if (env->ops->open)
        env->ops->open(env->app, c);
    /* SPEC §3: bytes after the head in the same read are the first frame bytes */
    size_t rest = c->request->in.len - req->head_len;
    if (rest && c->state != WS_CONN_CLOSED)
        ws_conn_process_frames(c, c->request->in.data + req->head_len, rest);
}

/* Answers a request that could not be read: the status that goes with err. req is its head
 * when that much was parsed, else NULL. */
static void refuse_request(struct ws_conn *c, int err, const struct ws_http_request *req)
{
    struct ws_front_reply r = {0};
    ws_front_error(&r, ws_err_http_status(err), ws_strerror(err), strlen(ws_strerror(err)), NULL,
                   true);
    answer(c, &r, req);
    ws_front_reply_free(&r);
}

/* Carries out the front's decision on req (r is freed). */
static void carry_out(struct ws_conn *c, struct ws_front_reply *r,
                      const struct ws_http_request *req)
{
    if (r->action == WS_FRONT_PENDING) {
        /* the request stays in c->request until the app decides */
        c->deciding =
            ws_handshake_is_upgrade(req) ? WS_CONN_DECIDING_UPGRADE : WS_CONN_DECIDING_HTTP;
    } else if (r->action == WS_FRONT_UPGRADE) {
        open_ws(c, r, req);
        free_request(c);
    } else {
        answer(c, r, req);
    }
    ws_front_reply_free(r);
}

/* The whole request is here (head, and body when it has one): the front decides. */
static void decide(struct ws_conn *c, const struct ws_http_request *req)
{
    struct ws_front_reply r = {0};
    if (c->ops_port)
        ws_front_handle_ops(c->env, req, &r);
    else
        ws_front_handle(c->env, c, req, &r);
    carry_out(c, &r, req);
}

/* Bytes that come while the app decides. An upgrade's are its first frames: kept, and past one
 * read's worth reading stops until the decision. A plain request's are not read (it closes after
 * its answer). Reading goes on otherwise, so a client that leaves is seen. */
void ws_conn_while_deciding(struct ws_conn *c, const uint8_t *data, size_t n)
{
    if (c->deciding != WS_CONN_DECIDING_UPGRADE)
        return;
    ws_buf_append(&c->request->in, data, n);
    if (c->request->in.len - c->request->head_len > WS_ENV_READ_BYTES)
        ws_conn_hold_reading(c, true);
}

/* The app decided: false when the connection went away meanwhile. */
static bool decided(struct ws_conn *c, enum ws_conn_decision was)
{
    bool live = c->deciding == was && c->state == WS_CONN_CONNECTING;
    c->deciding = WS_CONN_DECIDED;
    if (live)
        ws_conn_hold_reading(c, false);
    return live;
}

void ws_conn_upgrade_decided(struct ws_conn *c, struct ws_upgrade_reply *app)
{
    struct ws_http_request req;
    if (!decided(c, WS_CONN_DECIDING_UPGRADE) || !ws_request_head(c->request, &req)) {
        free(app->body);
        free(app->headers);
        free(app->protocol);
        return;
    }
    struct ws_front_reply r;
    ws_front_upgrade_decided(c->env, &req, app, &r);
    carry_out(c, &r, &req);
}

void ws_conn_http_answered(struct ws_conn *c, struct ws_http_reply *app)
{
    struct ws_http_request req;
    if (!decided(c, WS_CONN_DECIDING_HTTP) || !ws_request_complete(c->request, &req)) {
        free(app->body);
        free(app->headers);
        free(app->content_type);
        return;
    }
    struct ws_front_reply r;
    ws_front_http_answered(&req, app, &r);
    carry_out(c, &r, &req);
}

/* Behind a trusted proxy the client is the address it forwards: the peer from now on (logs,
 * conn.peer) and the one counted against max_connections_per_ip. False when refused for it. */
static bool forwarded(struct ws_conn *c, const struct ws_http_request *req)
{
    struct sockaddr_storage client;
    if (!ws_front_client_address(c->env, &c->peer.sa, req, &client))
        return true;
    memcpy(&c->peer, &client, sizeof(c->peer));
    if (ws_conn_cfg(c)->max_connections_per_ip > 0 && !c->ip_counted) {
        if (!ws_conn_take_ip_slot(c)) {
            struct ws_front_reply r = {0};
            const char *msg = "too many connections from this address";
            ws_front_error(&r, 503, msg, strlen(msg), NULL, true);
            answer(c, &r, req);
            ws_front_reply_free(&r);
            return false;
        }
    }
    return true;
}

void ws_conn_read_request(struct ws_conn *c, const uint8_t *data, size_t len)
{
    const struct ws_request_limits lim = {(size_t)ws_conn_cfg(c)->max_header_size,
                                          (size_t)ws_conn_cfg(c)->max_body_size,
                                          WS_CONN_REQUEST_READ_BYTES};
    struct ws_http_request req;
    int rc = ws_request_feed(c->request, data, len, &lim, &req);
    if (rc == WS_E_AGAIN)
        return;
    bool head = rc == 0 || ws_request_head(c->request, &req);
    if (head && !c->path)
        c->path = req.target.n == 1 && req.target.p[0] == '/'
                      ? root_path
                      : ws_xstrndup(req.target.p, req.target.n);
    if (rc < 0)
        refuse_request(c, rc, head ? &req : NULL);
    else if (forwarded(c, &req))
        decide(c, &req);
}

void ws_conn_free_http(struct ws_conn *c)
{
    free_request(c);
    if (c->path != root_path)
        free(c->path);
    c->path = NULL;
}
