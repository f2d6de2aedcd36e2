/* The HTTP front: one parsed request head in, one decision out. Every app reply is taken apart
 * and freed here, in one place; the caller sends the bytes and does the rest. */
#include "ws/front.h"

#include "ws/cidr.h"
#include "ws/handshake.h"
#include "ws/log.h"
#include "ws/static.h"

#include <assert.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
    if (st.status == 500) /* the folder went away or became unreadable: say so */
        ws_log_msg(WS_LOG_ERROR, "static_failed", "cannot read a file of the static folder");
    ws_static_reply_free(&st);
}

/* For load balancers: 503 once a shutdown has begun. */
static void healthz(struct ws_env *env, bool head, struct ws_front_reply *r)
{
    const char *body = env->draining ? "shutting down\n" : "ok\n";
    answer(r, env->draining ? 503 : 200, "text/plain; charset=utf-8", body, strlen(body), NULL,
           head);
}

static void metrics(struct ws_env *env, bool head, struct ws_front_reply *r)
{
    if (!env->render_metrics) {
        ws_front_error(r, 404, "not found", 9, NULL, false);
        return;
    }
    struct ws_buf out;
    ws_buf_init(&out);
    env->render_metrics(env->metrics_ctx, &out);
    answer(r, 200, "text/plain; version=0.0.4; charset=utf-8", out.data, out.len, NULL, head);
    ws_buf_reset(&out);
}

/* An app route's answer; what app owns is freed. */
static void answer_app(const struct ws_http_request *req, struct ws_http_reply *app,
                       struct ws_front_reply *r)
{
    answer(r, app->status, app->content_type ? app->content_type : "text/plain; charset=utf-8",
           app->body, app->body_len, app->headers, method_is(req, "HEAD"));
    free(app->body);
    free(app->headers);
    free(app->content_type);
}

/* A plain request: built-in endpoints, the app's routes, static files, or a refusal. */
static void answer_http(struct ws_env *env, struct ws_conn *c, const struct ws_http_request *req,
                        struct ws_front_reply *r)
{
    bool head = method_is(req, "HEAD");
    bool get = head || method_is(req, "GET");
    struct ws_http_reply app = {0};
    /* with metrics_listen the built-in endpoints move there */
    bool builtin = get && !env->cfg.metrics_listen;
    if (builtin && path_is(req, "/healthz")) {
        healthz(env, head, r);
    } else if (builtin && env->cfg.metrics && env->render_metrics && path_is(req, "/metrics")) {
        metrics(env, head, r);
    } else if (env->ops->http && env->ops->http(env->app, c, req, &app)) {
        if (app.pending)
            reset(r, WS_FRONT_PENDING, 0);
        else
            answer_app(req, &app, r);
    } else if (get && env->cfg.static_dir) {
        serve_static(env, req, head, r);
    } else if (!get) {
        ws_front_error(r, 405, "method not allowed", 18, "Allow: GET, HEAD\r\n", false);
    } else if (env->ops->serves_http && env->ops->serves_http(env->app)) {
        ws_front_error(r, 404, "not found", 9, NULL, false);
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

/* One allowed_origins entry: an origin ("https://example.com", compared case-insensitively), a
 * scheme with a wildcard host ("https://" "*.example.com": any subdomain, not the domain
 * itself), or "*" (any). */
static bool origin_matches(const char *pattern, struct ws_span origin)
{
    if (strcmp(pattern, "*") == 0)
        return true;
    const char *star = strstr(pattern, "://*.");
    if (!star)
        return ws_span_ieq(origin, pattern);
    size_t scheme = (size_t)(star - pattern) + 3; /* "https://" */
    const char *suffix = star + 4;                /* ".example.com" */
    size_t sn = strlen(suffix);
    return origin.n > scheme + sn && strncasecmp(origin.p, pattern, scheme) == 0 &&
           strncasecmp(origin.p + origin.n - sn, suffix, sn) == 0 &&
           !memchr(origin.p + scheme, '/', origin.n - scheme - sn);
}

/* Cross-site WebSocket hijacking: a browser sends its page's Origin (RFC 6455 §10.2); a request
 * without one does not come from a browser page and is not a hijack. */
static bool origin_allowed(const struct ws_env *env, const struct ws_http_request *req)
{
    const struct ws_string_list *allowed = &env->cfg.allowed_origins;
    if (!allowed->n)
        return true;
    const struct ws_span *origin = ws_http_field(req, WS_HTTP_ORIGIN);
    if (!origin)
        return true;
    for (size_t i = 0; i < allowed->n; i++)
        if (origin_matches(allowed->items[i], *origin))
            return true;
    return false;
}

static void upgrade_decided(struct ws_env *env, const struct ws_http_request *req,
                            const struct ws_handshake *hs, struct ws_upgrade_reply *app,
                            struct ws_front_reply *r);

static void upgrade(struct ws_env *env, struct ws_conn *c, const struct ws_http_request *req,
                    struct ws_front_reply *r)
{
    struct ws_handshake hs;
    if (ws_handshake_check(req, &hs) < 0) {
        ws_front_error(r, hs.status, hs.reason, strlen(hs.reason), NULL, true);
        return;
    }
    if (!origin_allowed(env, req)) {
        ws_front_error(r, 403, "origin not allowed", 18, NULL, true);
        return;
    }
    if (env->nupgraded >= (size_t)env->cfg.max_connections) {
        ws_front_error(r, 503, "server full", 11, NULL, true);
        return;
    }
    struct ws_upgrade_reply app = {0};
    if (env->ops->upgrade)
        env->ops->upgrade(env->app, c, req, &app);
    if (app.pending)
        reset(r, WS_FRONT_PENDING, 0);
    else
        upgrade_decided(env, req, &hs, &app, r);
}

void ws_front_upgrade_decided(struct ws_env *env, const struct ws_http_request *req,
                              struct ws_upgrade_reply *app, struct ws_front_reply *r)
{
    memset(r, 0, sizeof(*r));
    ws_buf_init(&r->response);
    struct ws_handshake hs;
    int rc = ws_handshake_check(req, &hs); /* passed before the app was asked */
    assert(rc == 0);
    (void)rc;
    /* connections may have opened while the app decided */
    if (!app->status && env->nupgraded >= (size_t)env->cfg.max_connections) {
        free(app->protocol);
        app->protocol = NULL;
        app->status = 503;
        app->body = ws_xstrndup("server full", 11);
        app->body_len = 11;
    }
    upgrade_decided(env, req, &hs, app, r);
}

void ws_front_http_answered(const struct ws_http_request *req, struct ws_http_reply *app,
                            struct ws_front_reply *r)
{
    memset(r, 0, sizeof(*r));
    ws_buf_init(&r->response);
    answer_app(req, app, r);
}

/* After the app's upgrade hook: its refusal, or the 101 with the subprotocol and compression.
 * What app owns is taken or freed. */
static void upgrade_decided(struct ws_env *env, const struct ws_http_request *req,
                            const struct ws_handshake *hs, struct ws_upgrade_reply *app,
                            struct ws_front_reply *r)
{
    if (app->status) {
        ws_front_error(r, app->status, app->body, app->body ? app->body_len : 0, app->headers,
                       true);
        free(app->body);
        free(app->headers);
        free(app->protocol);
        return;
    }
    free(app->body);
    free(app->headers);
    if (!choose_protocol(env, req, app->protocol, r)) {
        ws_front_error(r, 500, "internal error", 14, NULL, true);
        return;
    }
    /* RFC 7692 §5: accept the first permessage-deflate offer we can honour */
    char ext[WS_DEFLATE_RESPONSE_MAX];
    r->deflate = env->deflate_cfg.enabled && hs->noffers &&
                 ws_deflate_negotiate(&env->deflate_cfg, hs->offers, hs->noffers, &r->params, ext,
                                      sizeof(ext)) == 1;
    char out[RESPONSE_HEAD_MAX];
    size_t n =
        ws_handshake_response(out, sizeof(out), hs, r->protocol,
                              r->protocol ? strlen(r->protocol) : 0, r->deflate ? ext : NULL);
    if (!n) {
        ws_front_error(r, 500, "internal error", 14, NULL, true);
        return;
    }
    reset(r, WS_FRONT_UPGRADE, 101);
    ws_buf_append(&r->response, out, n);
}

void ws_front_handle_ops(struct ws_env *env, const struct ws_http_request *req,
                         struct ws_front_reply *r)
{
    memset(r, 0, sizeof(*r));
    ws_buf_init(&r->response);
    bool head = method_is(req, "HEAD");
    bool get = head || method_is(req, "GET");
    if (!get)
        ws_front_error(r, 405, "method not allowed", 18, "Allow: GET, HEAD\r\n", false);
    else if (path_is(req, "/healthz"))
        healthz(env, head, r);
    else if (path_is(req, "/metrics"))
        metrics(env, head, r);
    else
        ws_front_error(r, 404, "not found: this listener serves /metrics and /healthz", 53, NULL,
                       false);
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

bool ws_front_trusted(const struct ws_env *env, const struct sockaddr *sa)
{
    for (size_t i = 0; i < env->ntrusted; i++)
        if (ws_cidr_match(&env->trusted[i], sa))
            return true;
    return false;
}

#define MAX_HOPS 64

/* The node of one Forwarded element's for= parameter (RFC 7239 §4, §6), unquoted and without
 * its port; false when the element has none. */
static bool forwarded_for(struct ws_span element, struct ws_span *node)
{
    while (element.n) {
        const char *semi = memchr(element.p, ';', element.n);
        size_t n = semi ? (size_t)(semi - element.p) : element.n;
        struct ws_span pair = {element.p, n};
        while (pair.n && (pair.p[0] == ' ' || pair.p[0] == '\t')) {
            pair.p++;
            pair.n--;
        }
        if (pair.n > 4 && strncasecmp(pair.p, "for=", 4) == 0) {
            struct ws_span v = {pair.p + 4, pair.n - 4};
            if (v.n >= 2 && v.p[0] == '"' && v.p[v.n - 1] == '"') {
                v.p++;
                v.n -= 2;
            }
            const char *close = v.n && v.p[0] == '[' ? memchr(v.p, ']', v.n) : NULL;
            const char *colon = memchr(v.p, ':', v.n);
            if (close)
                v.n = (size_t)(close - v.p) + 1; /* "[v6]:port" -> "[v6]" */
            else if (colon && !memchr(colon + 1, ':', v.n - (size_t)(colon - v.p) - 1))
                v.n = (size_t)(colon - v.p); /* "v4:port" -> "v4" */
            *node = v;
            return true;
        }
        element.p += n + (semi ? 1 : 0);
        element.n -= n + (semi ? 1 : 0);
    }
    return false;
}

/* The hops a request went through, client first: X-Forwarded-For, else Forwarded's for=. */
static size_t collect_hops(const struct ws_http_request *req, struct ws_span *hops)
{
    size_t n = 0;
    bool xff = ws_http_field(req, WS_HTTP_X_FORWARDED_FOR) != NULL;
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct ws_http_header *h = &req->headers[i];
        if (!ws_span_ieq(h->name, xff ? "X-Forwarded-For" : "Forwarded"))
            continue;
        struct ws_span list = h->value, tok;
        while (n < MAX_HOPS && ws_http_next_token(&list, &tok)) {
            if (xff)
                hops[n++] = tok;
            else if (forwarded_for(tok, &hops[n]))
                n++;
        }
    }
    return n;
}

bool ws_front_client_address(const struct ws_env *env, const struct sockaddr *peer,
                             const struct ws_http_request *req, struct sockaddr_storage *out)
{
    if (!env->ntrusted || !ws_front_trusted(env, peer))
        return false;
    struct ws_span hops[MAX_HOPS];
    size_t n = collect_hops(req, hops);
    /* from the nearest hop back: the first address that is not a trusted proxy is the client
     * (anything before it could have been written by the client itself) */
    bool found = false;
    for (size_t i = n; i-- > 0;) {
        struct sockaddr_storage hop;
        if (ws_cidr_address(hops[i].p, hops[i].n, &hop) < 0)
            return found; /* "unknown" or garbage: the last good hop is as far as we can see */
        *out = hop;
        found = true;
        if (!ws_front_trusted(env, (const struct sockaddr *)out))
            return true;
    }
    return found;
}
