/* ws.http: request(opts), get(url [, opts]), post(url, body [, opts]) for handlers. Each call
 * starts a transfer on the core's HTTP client (http_client.c) and waits (SPEC §4a): the task
 * yields and the transfer's end, its timeout or a cancel resumes it. Misuse raises; what goes
 * wrong on the network comes back as nil, message. */
#include "ws/lb.h"

#include "ws/clock.h"
#include "ws/http_client.h"
#include "ws/log.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#define CALL_MT "wsserver.http_call"
#define DEFAULT_MAX_BODY (8u << 20)

/* One call in flight: a userdata on the waiting coroutine's stack, so it lives as long as the
 * wait; its __gc releases whatever is left. */
struct http_call {
    struct ws_http_req *req; /* in flight, or NULL */
    const struct ws_http_client_ops *ops;
    struct lb_task *t;
    struct ws_http_result res;
    bool done;
    char url[256]; /* for logs: scheme, host and path, never the query */
};

/* [-0, +0, -] */
static int call_gc(lua_State *L)
{
    struct http_call *c = lua_touserdata(L, 1);
    if (c->req)
        c->ops->cancel(c->req);
    c->req = NULL;
    ws_http_result_free(&c->res);
    return 0;
}

static void on_done(void *ud, struct ws_http_result *res)
{
    struct http_call *c = ud;
    c->req = NULL;
    c->res = *res;
    c->done = true;
    lb_task_wake(c->t, NULL);
}

/* The wait ended early (timeout, close, shutdown): the transfer stops. */
static void on_cancel(struct lb_task *t)
{
    struct http_call *c = t->wait_ud;
    if (c->req)
        c->ops->cancel(c->req);
    c->req = NULL;
}

static void log_failure(struct lb_task *t, const struct http_call *c, const char *why)
{
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_WARN, "http_failed");
    ws_log_cstr(&l, "handler", t->what ? t->what : "?");
    if (t->conn)
        ws_log_u64(&l, "conn", t->conn);
    ws_log_cstr(&l, "url", c->url);
    ws_log_cstr(&l, "error", why);
    ws_log_end(&l);
}

/* Pushes the response's header lines as a table: names lower-cased, repeated fields joined with
 * ", " (RFC 9110 §5.3). [-0, +1, m] */
static void push_headers(lua_State *L, const char *p, size_t n)
{
    lua_newtable(L);
    size_t i = 0;
    bool first = true;
    while (i < n) {
        size_t end = i;
        while (end < n && p[end] != '\n')
            end++;
        size_t len = end - i;
        if (len && p[i + len - 1] == '\r')
            len--;
        const char *colon = first ? NULL : memchr(p + i, ':', len);
        first = false;
        if (colon && colon > p + i) {
            size_t kn = (size_t)(colon - (p + i));
            char name[256];
            if (kn < sizeof(name)) {
                for (size_t k = 0; k < kn; k++)
                    name[k] = (char)(p[i + k] >= 'A' && p[i + k] <= 'Z' ? p[i + k] + 32 : p[i + k]);
                const char *v = colon + 1;
                size_t vn = len - kn - 1;
                while (vn && (*v == ' ' || *v == '\t')) {
                    v++;
                    vn--;
                }
                while (vn && (v[vn - 1] == ' ' || v[vn - 1] == '\t'))
                    vn--;
                lua_pushlstring(L, name, kn);
                if (lua_rawget(L, -2) == LUA_TSTRING) {
                    lua_pushliteral(L, ", ");
                    lua_pushlstring(L, v, vn);
                    lua_concat(L, 3);
                } else {
                    lua_pop(L, 1);
                    lua_pushlstring(L, v, vn);
                }
                lua_pushlstring(L, name, kn);
                lua_insert(L, -2);
                lua_rawset(L, -3);
            }
        }
        i = end + 1;
    }
}

/* The continuation: {status, headers, body}, or nil and why. [-0, +1|+2, m] */
static int request_done(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    struct lb_task *t = (struct lb_task *)ctx;
    struct http_call *c = t->wait_ud;
    struct lb_app *a = t->a;
    struct ws_stats *st = a->srv ? a->srv->env.stats : NULL;
    double seconds = ws_clock_now(a->loop) - t->wait_started;
    const char *why = t->woke;
    if (!why && !c->res.ok)
        why = c->res.err;
    if (why) {
        bool timeout = strcmp(why, "timeout") == 0 || c->res.timed_out;
        /* a close or a shutdown is no failure of the request */
        bool cancelled = t->woke && !timeout;
        if (st && !cancelled)
            ws_stats_observe_http(st, timeout ? WS_STATS_HTTP_TIMEOUT : WS_STATS_HTTP_ERROR,
                                  seconds);
        if (!cancelled)
            log_failure(t, c, timeout ? "timeout" : why);
        lua_pushnil(L);
        lua_pushstring(L, timeout ? "timeout" : why);
        ws_http_result_free(&c->res);
        return 2;
    }
    if (st)
        ws_stats_observe_http(st, WS_STATS_HTTP_OK, seconds);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, c->res.status);
    lua_setfield(L, -2, "status");
    push_headers(L, (const char *)c->res.headers.data, c->res.headers.len);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, c->res.body.len ? (const char *)c->res.body.data : "", c->res.body.len);
    lua_setfield(L, -2, "body");
    ws_http_result_free(&c->res);
    return 1;
}

/* The URL as logs show it: up to the query or fragment. */
static void url_for_log(char *out, size_t cap, const char *url, size_t n)
{
    size_t k = 0;
    while (k < n && url[k] != '?' && url[k] != '#')
        k++;
    snprintf(out, cap, "%.*s", (int)k, url);
}

static bool token_char(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           strchr("!#$%&'*+-.^_`|~", ch);
}

/* opts.name as a string or nil; raises for another type. [-0, +0, v] */
static const char *opt_string(lua_State *L, int idx, const char *name, size_t *len)
{
    lua_getfield(L, idx, name);
    int ty = lua_type(L, -1);
    const char *s = NULL;
    if (ty == LUA_TSTRING)
        s = lua_tolstring(L, -1, len);
    else if (ty != LUA_TNIL)
        luaL_error(L, "ws.http: opts.%s must be a string, got %s", name, luaL_typename(L, -1));
    lua_pop(L, 1); /* the string stays alive in the opts table */
    return s;
}

/* ws.http.request(opts) -> {status, headers, body} | nil, err; waits. [-0, +1|+2, v] */
static int http_request(lua_State *L)
{
    struct lb_app *a = lb_app_of(L);
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    struct ws_http_opts o;
    memset(&o, 0, sizeof(o));
    size_t url_len = 0;
    o.url = opt_string(L, 1, "url", &url_len);
    if (!o.url)
        return luaL_error(L, "ws.http: opts.url is required");
    if ((strncmp(o.url, "http://", 7) != 0 && strncmp(o.url, "https://", 8) != 0) ||
        strlen(o.url) != url_len)
        return luaL_error(L, "ws.http: url must be an http:// or https:// URL");
    size_t mlen = 0;
    o.method = opt_string(L, 1, "method", &mlen);
    if (o.method) {
        bool ok = mlen > 0 && mlen <= 32;
        for (size_t i = 0; ok && i < mlen; i++)
            ok = token_char(o.method[i]);
        if (!ok)
            return luaL_error(L, "ws.http: opts.method must be an HTTP method token");
    }
    o.body = opt_string(L, 1, "body", &o.body_len);
    o.ca_file = opt_string(L, 1, "ca_file", NULL);
    lua_getfield(L, 1, "timeout");
    o.timeout = a->config.io_timeout;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) > 0) ||
            !isfinite(lua_tonumber(L, -1)))
            return luaL_error(L, "ws.http: opts.timeout must be a number of seconds > 0");
        o.timeout = lua_tonumber(L, -1);
    }
    lua_getfield(L, 1, "max_body");
    o.max_body = DEFAULT_MAX_BODY;
    if (!lua_isnil(L, -1)) {
        if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0)
            return luaL_error(L, "ws.http: opts.max_body must be a whole number of bytes >= 0");
        o.max_body = (size_t)lua_tointeger(L, -1);
    }
    lua_getfield(L, 1, "follow");
    o.follow = lua_toboolean(L, -1);
    lua_getfield(L, 1, "insecure");
    o.insecure = lua_toboolean(L, -1);
    lua_settop(L, 1);
    lua_getfield(L, 1, "headers");
    int hidx = lua_gettop(L);
    if (!lua_isnil(L, hidx)) {
        luaL_argexpected(L, lua_istable(L, hidx), 1, "opts.headers as a table");
        lua_pushnil(L);
        while (lua_next(L, hidx)) {
            if (o.nheaders == WS_HTTP_MAX_HEADERS)
                return luaL_error(L, "ws.http: at most %d headers", WS_HTTP_MAX_HEADERS);
            /* the line stays on the stack until the request is made */
            o.headers[o.nheaders++] = lb_push_header_line(L, "ws.http");
            lua_insert(L, hidx + 1);
            lua_pop(L, 1);
        }
    }
    struct lb_task *t = lb_task_waiter(L, "ws.http.request");
    if (t->gone) {
        lua_pushnil(L);
        lua_pushstring(L, t->gone);
        return 2;
    }
    struct http_call *c = lua_newuserdatauv(L, sizeof(*c), 0);
    memset(c, 0, sizeof(*c));
    ws_buf_init(&c->res.headers);
    ws_buf_init(&c->res.body);
    luaL_setmetatable(L, CALL_MT);
    c->t = t;
    c->ops = a->http_ops;
    url_for_log(c->url, sizeof(c->url), o.url, url_len);
    char err[256];
    if (!a->http) {
        a->http = ws_http_client_new(a->loop, (size_t)a->config.http_max_concurrent);
        if (!a->http) {
            lua_pushnil(L);
            lua_pushliteral(L, "the HTTP client cannot start");
            return 2;
        }
    }
    c->req = a->http_ops->request(a->http, &o, on_done, c, err, sizeof(err));
    if (!c->req) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return lb_task_wait(L, t, o.timeout, false, on_cancel, c, request_done);
}

/* Replaces the arguments with a copy of the opts table at idx (or a new one) holding url and
 * the given method and body. [-?, +1, m] */
static void build_opts(lua_State *L, int idx, const char *method, int body_idx)
{
    lua_newtable(L);
    int t = lua_gettop(L);
    if (!lua_isnoneornil(L, idx)) {
        luaL_checktype(L, idx, LUA_TTABLE);
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            lua_pushvalue(L, -2);
            lua_insert(L, -2);
            lua_rawset(L, t);
        }
    }
    lua_pushvalue(L, 1);
    lua_setfield(L, t, "url");
    if (method) {
        lua_getfield(L, t, "method");
        if (lua_isnil(L, -1)) {
            lua_pushstring(L, method);
            lua_setfield(L, t, "method");
        }
        lua_pop(L, 1);
    }
    if (body_idx) {
        lua_pushvalue(L, body_idx);
        lua_setfield(L, t, "body");
    }
    lua_replace(L, 1);
    lua_settop(L, 1);
}

/* ws.http.get(url [, opts]) [-0, +1|+2, v] */
static int http_get(lua_State *L)
{
    luaL_checkstring(L, 1);
    build_opts(L, 2, "GET", 0);
    return http_request(L);
}

/* ws.http.post(url, body [, opts]) [-0, +1|+2, v] */
static int http_post(lua_State *L)
{
    luaL_checkstring(L, 1);
    luaL_checkstring(L, 2);
    build_opts(L, 3, "POST", 2);
    return http_request(L);
}

void lb_http_open(lua_State *L)
{
    luaL_newmetatable(L, CALL_MT);
    lua_pushcfunction(L, call_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {
        {"request", http_request},
        {"get", http_get},
        {"post", http_post},
        {NULL, NULL},
    };
    luaL_newlib(L, funcs);
}
