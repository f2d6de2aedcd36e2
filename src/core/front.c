/* The HTTP front: one parsed request head in, one decision out. Every app reply is taken apart
 * and freed here, in one place; the caller sends the bytes and does the rest. */
#include "ws/front.h"

#include "ws/handshake.h"
#include "ws/log.h"
#include "ws/static.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RESPONSE_HEAD_MAX 1024
#define ERROR_BODY_MAX 1024

static void reset(struct ws_front_reply *r, enum ws_front_action action, int status)
{
    r->action = action;
    r->status = status;
    r->refused = false;
    r->reason[0] = 0;
    r->response.len = 0;
}

/* When a response cannot be built (an app's header lines too long for the head, a status that is
 * not three digits): a bare 500, so the status reported is the one sent and no body follows a head
 * that does not announce it. */
static void fallback(struct ws_front_reply *r)
{
    static const char head[] = "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n"
                               "Connection: close\r\n\r\n";
    r->status = 500;
    r->response.len = 0;
    ws_buf_append(&r->response, head, sizeof(head) - 1);
}

/* A complete response: head with Content-Type and Content-Length, then the body (not for HEAD
 * and 304). */
static void answer(struct ws_front_reply *r, int status, const char *content_type, const void *body,
                   size_t body_len, const char *extra, bool head_only)
{
    reset(r, WS_FRONT_ANSWER, status);
    char head[RESPONSE_HEAD_MAX];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                     "Connection: close\r\n%s\r\n",
                     status, ws_http_reason(status), content_type, body_len, extra ? extra : "");
    if (n < 0 || (size_t)n >= sizeof(head)) {
        fallback(r);
        return;
    }
    ws_buf_append(&r->response, head, (size_t)n);
    if (!head_only)
        ws_buf_append(&r->response, body, body_len);
}

void ws_front_error(struct ws_front_reply *r, int status, const char *body, size_t len,
                    const char *extra, bool refused)
{
    reset(r, WS_FRONT_ANSWER, status);
    if (!body) {
        body = ws_http_reason(status);
        len = strlen(body);
    }
    if (len > ERROR_BODY_MAX)
        len = ERROR_BODY_MAX;
    char line[ERROR_BODY_MAX + 2];
    bool newline = len > 0 && body[len - 1] == '\n';
    int k = snprintf(line, sizeof(line), "%.*s%s", (int)len, body, newline ? "" : "\n");
    char out[ERROR_BODY_MAX + RESPONSE_HEAD_MAX];
    size_t n = ws_handshake_error_response(out, sizeof(out), status, line, (size_t)k, extra);
    if (n)
        ws_buf_append(&r->response, out, n);
    else
        fallback(r);
    snprintf(r->reason, sizeof(r->reason), "%.*s", (int)(len - newline), body);
    r->refused = refused;
}

void ws_front_reply_free(struct ws_front_reply *r)
{
    ws_buf_reset(&r->response);
    free(r->protocol);
    r->protocol = NULL;
}

static bool method_is(const struct ws_http_request *req, const char *m)
{
    /* RFC 9110 §9.1: methods are case-sensitive */
    return req->method.n == strlen(m) && memcmp(req->method.p, m, req->method.n) == 0;
}

static bool path_is(const struct ws_http_request *req, const char *path)
{
    const char *q = memchr(req->target.p, '?', req->target.n);
    size_t n = q ? (size_t)(q - req->target.p) : req->target.n;
    return n == strlen(path) && memcmp(req->target.p, path, n) == 0;
}

static void serve_static(struct ws_env *env, const struct ws_http_request *req, bool head,
                         struct ws_front_reply *r)
{
    struct ws_static_reply st;
    ws_static_serve(env->cfg.static_dir, req, &st);
    if (st.status == 200 || st.status == 304)
        answer(r, st.status, st.content_type, st.body, st.body_len, st.headers,
               head || st.status == 304);
    else
        ws_front_error(r, st.status, NULL, 0, st.headers, false);
    ws_static_reply_free(&st);
}

/* A plain request: built-in endpoints, the app's routes, static files, or a refusal. */
static void answer_http(struct ws_env *env, struct ws_conn *c, const struct ws_http_request *req,
                        struct ws_front_reply *r)
{
    bool head = method_is(req, "HEAD");
    bool get = head || method_is(req, "GET");
    struct ws_http_reply app = {0};
    if (get && path_is(req, "/healthz")) {
        /* for load balancers: 503 once a shutdown has begun */
        const char *body = env->draining ? "shutting down\n" : "ok\n";
        answer(r, env->draining ? 503 : 200, "text/plain; charset=utf-8", body, strlen(body), NULL,
               head);
    } else if (get && env->cfg.metrics && env->render_metrics && path_is(req, "/metrics")) {
        struct ws_buf out;
        ws_buf_init(&out);
        env->render_metrics(env->metrics_ctx, &out);
        answer(r, 200, "text/plain; version=0.0.4; charset=utf-8", out.data, out.len, NULL, head);
        ws_buf_reset(&out);
    } else if (env->ops->http && env->ops->http(env->app, c, req, &app)) {
        answer(r, app.status, app.content_type ? app.content_type : "text/plain; charset=utf-8",
               app.body, app.body_len, app.headers, head);
        free(app.body);
        free(app.headers);
        free(app.content_type);
    } else if (get && env->cfg.static_dir) {
        serve_static(env, req, head, r);
    } else if (!get) {
        ws_front_error(r, 405, "method not allowed", 18, "Allow: GET, HEAD\r\n", false);
    } else {
        const char *msg = "this is a WebSocket endpoint: use a WebSocket client";
        ws_front_error(r, 426, msg, strlen(msg), "Upgrade: websocket\r\n", false);
    }
}

/* The subprotocol: the app's choice (one the client offered), else the first of
 * config.protocols the client offered. False when the app chose one not offered. */
static bool choose_protocol(struct ws_env *env, const struct ws_http_request *req, char *chosen,
                            struct ws_front_reply *r)
{
    if (chosen) {
        if (!ws_handshake_offers_protocol(req, chosen, strlen(chosen))) {
            /* SPEC §3: answer only a protocol the client offered */
            ws_log_msg(WS_LOG_ERROR, "bad_protocol", "upgrade chose a protocol not offered");
            free(chosen);
            return false;
        }
        r->protocol = chosen;
    } else if (env->cfg.protocols.n) {
        const struct ws_string_list *p = &env->cfg.protocols;
        int i = ws_handshake_select_protocol(req, (const char *const *)p->items, p->n);
        if (i >= 0)
            r->protocol = ws_xstrndup(p->items[i], strlen(p->items[i]));
    }
    return true;
}

static void upgrade(struct ws_env *env, struct ws_conn *c, const struct ws_http_request *req,
                    struct ws_front_reply *r)
{
    struct ws_handshake hs;
    if (ws_handshake_check(req, &hs) < 0) {
        ws_front_error(r, hs.status, hs.reason, strlen(hs.reason), NULL, true);
        return;
    }
    if (env->nupgraded >= (size_t)env->cfg.max_connections) {
        ws_front_error(r, 503, "server full", 11, NULL, true);
        return;
    }
    struct ws_upgrade_reply app = {0};
    if (env->ops->upgrade)
        env->ops->upgrade(env->app, c, req, &app);
    if (app.status) {
        ws_front_error(r, app.status, app.body, app.body ? app.body_len : 0, app.headers, true);
        free(app.body);
        free(app.headers);
        free(app.protocol);
        return;
    }
    free(app.body);
    free(app.headers);
    if (!choose_protocol(env, req, app.protocol, r)) {
        ws_front_error(r, 500, "internal error", 14, NULL, true);
        return;
    }
    /* RFC 7692 §5: accept the first permessage-deflate offer we can honour */
    char ext[WS_DEFLATE_RESPONSE_MAX];
    r->deflate = env->deflate_cfg.enabled && hs.noffers &&
                 ws_deflate_negotiate(&env->deflate_cfg, hs.offers, hs.noffers, &r->params, ext,
                                      sizeof(ext)) == 1;
    char out[RESPONSE_HEAD_MAX];
    size_t n =
        ws_handshake_response(out, sizeof(out), &hs, r->protocol,
                              r->protocol ? strlen(r->protocol) : 0, r->deflate ? ext : NULL);
    if (!n) {
        ws_front_error(r, 500, "internal error", 14, NULL, true);
        return;
    }
    reset(r, WS_FRONT_UPGRADE, 101);
    ws_buf_append(&r->response, out, n);
}

void ws_front_handle(struct ws_env *env, struct ws_conn *c, const struct ws_http_request *req,
                     struct ws_front_reply *r)
{
    memset(r, 0, sizeof(*r));
    ws_buf_init(&r->response);
    if (ws_handshake_is_upgrade(req))
        upgrade(env, c, req, r);
    else
        answer_http(env, c, req, r);
}
