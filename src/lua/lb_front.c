/* The Lua side of the app's HTTP handlers, upgrade(req) and the app.http routes: the request as
 * a table, the route's lookup, the handler's results read into the core's upgrade or HTTP reply,
 * a failed one's 500. Running them as tasks and holding the answer of one that waits is lb_app's
 * part; what the core's front decides (limits, refusals, built-in endpoints, static files) never
 * reaches either. */
#include "ws/lb.h"

#include "ws/buf.h"
#include "ws/connlog.h"
#include "ws/handshake.h"

#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- upgrade: the request as a table ---- */

/* Pushes req as the table upgrade() and http routes receive. [-0, +1, m] */
static void push_request(lua_State *L, struct ws_conn *c, const struct ws_http_request *req)
{
    lua_createtable(L, 0, 10);
    lua_pushlstring(L, req->method.p, req->method.n);
    lua_setfield(L, -2, "method");
    const char *q = memchr(req->target.p, '?', req->target.n);
    size_t path_len = q ? (size_t)(q - req->target.p) : req->target.n;
    lua_pushlstring(L, req->target.p, path_len);
    lua_setfield(L, -2, "path");
    lua_pushlstring(L, req->target.p, req->target.n);
    lua_setfield(L, -2, "target");
    if (q) {
        const char *qs = q + 1;
        size_t qn = req->target.n - path_len - 1;
        lb_push_pairs(L, qs, qn, '&', true);
        lua_setfield(L, -2, "query");
        lua_pushlstring(L, qs, qn);
        lua_setfield(L, -2, "query_string");
    } else {
        lua_newtable(L);
        lua_setfield(L, -2, "query");
    }
    /* headers: names lower-cased, repeated fields joined with ", " (RFC 9110 §5.3) */
    lua_newtable(L);
    for (size_t i = 0; i < req->nheaders; i++) {
        const struct ws_http_header *h = &req->headers[i];
        char name[256];
        size_t n = h->name.n < sizeof(name) ? h->name.n : sizeof(name) - 1;
        for (size_t k = 0; k < n; k++)
            name[k] = (char)((h->name.p[k] >= 'A' && h->name.p[k] <= 'Z') ? h->name.p[k] + 32
                                                                          : h->name.p[k]);
        lua_pushlstring(L, name, n);
        if (lua_rawget(L, -2) == LUA_TSTRING) {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h->value.p, h->value.n);
            lua_concat(L, 3);
        } else {
            lua_pop(L, 1);
            lua_pushlstring(L, h->value.p, h->value.n);
        }
        lua_pushlstring(L, name, n);
        lua_insert(L, -2);
        lua_rawset(L, -3);
    }
    lua_getfield(L, -1, "origin");
    lua_setfield(L, -3, "origin");
    lua_getfield(L, -1, "cookie");
    size_t clen = 0;
    const char *cookie = lua_tolstring(L, -1, &clen);
    lb_push_pairs(L, cookie ? cookie : "", cookie ? clen : 0, ';', false);
    lua_setfield(L, -4, "cookies");
    lua_pop(L, 1);
    lua_setfield(L, -2, "headers");
    /* offered subprotocols, in the client's order */
    lua_newtable(L);
    lua_Integer np = 0;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (!ws_span_ieq(req->headers[i].name, "sec-websocket-protocol"))
            continue;
        struct ws_span list = req->headers[i].value, tok;
        while (ws_http_next_token(&list, &tok)) {
            lua_pushlstring(L, tok.p, tok.n);
            lua_rawseti(L, -2, ++np);
        }
    }
    lua_setfield(L, -2, "protocols");
    char peer[64];
    lua_pushstring(L, ws_connlog_peer(c, peer, sizeof(peer)));
    lua_setfield(L, -2, "peer");
    if (req->body.p) {
        lua_pushlstring(L, req->body.p, req->body.n);
        lua_setfield(L, -2, "body");
    }
}

static char *dup_string(lua_State *L, int idx, size_t *len)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (len)
        *len = n;
    return s ? ws_xstrndup(s, n) : NULL; /* bodies may hold NUL bytes */
}

/* Reads a headers table at idx into CRLF-terminated lines in out (NUL-terminated), taking
 * Content-Type aside into *content_type when that is not NULL. Names with CR, LF or ':' and
 * values with CR or LF are skipped, so an app cannot inject header lines. [-0, +0, m] */
static void collect_headers(lua_State *L, int idx, struct ws_buf *out, char **content_type)
{
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        size_t kn = 0, vn = 0;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
        const char *v = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER
                            ? lua_tolstring(L, -1, &vn)
                            : NULL;
        bool clean = k && v && kn && !memchr(k, '\r', kn) && !memchr(k, '\n', kn) &&
                     !memchr(k, ':', kn) && !memchr(v, '\r', vn) && !memchr(v, '\n', vn);
        if (clean && content_type && strcasecmp(k, "content-type") == 0) {
            free(*content_type);
            *content_type = strndup(v, vn);
        } else if (clean) {
            ws_buf_append(out, k, kn);
            ws_buf_append(out, ": ", 2);
            ws_buf_append(out, v, vn);
            ws_buf_append(out, "\r\n", 2);
        }
        lua_pop(L, 1);
    }
    ws_buf_append(out, "", 1);
}

/* The connection whose upgrade or http handler the running task is, once it has waited (its
 * caller has returned: the answer is built in the connection's decision). */
static struct lb_connq *waited(lua_State *L)
{
    return lb_app_of(L)->current->ud;
}

/* Reads upgrade's results (false, status, body, headers | {protocol =, data =}) at 2..5 into
 * reply. [-0, +0, e] */
static void upgrade_results(lua_State *L, struct ws_conn *c, struct ws_upgrade_reply *reply)
{
    if (lua_istable(L, 2)) {
        /* accept with {protocol = ..., data = ...} */
        lua_getfield(L, 2, "protocol");
        if (lua_type(L, -1) == LUA_TSTRING)
            reply->protocol = dup_string(L, -1, NULL);
        lua_pop(L, 1);
        lua_getfield(L, 2, "data");
        if (!lua_isnil(L, -1)) {
            lb_conn_push(L, c);
            lua_pushvalue(L, -2);
            lua_setfield(L, -2, "data");
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    } else if (lua_toboolean(L, 2) == 0 && !lua_isnil(L, 2)) {
        /* refuse: false, status, body */
        int isnum;
        lua_Integer status = lua_tointegerx(L, 3, &isnum); /* 401 and 401.0 alike */
        if (!isnum)
            status = 403;
        reply->status = status >= 400 && status <= 599 ? (int)status : 403;
        if (lua_type(L, 4) == LUA_TSTRING)
            reply->body = dup_string(L, 4, &reply->body_len);
        if (lua_istable(L, 5)) {
            /* e.g. WWW-Authenticate with a 401, Retry-After with a 503 */
            struct ws_buf h;
            ws_buf_init(&h);
            collect_headers(L, 5, &h, NULL);
            reply->headers = (char *)h.data;
        }
    }
}

/* upgrade(req) returned after waiting. [-0, +0, e] */
static int upgrade_returned(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    struct lb_connq *q = waited(L);
    upgrade_results(L, q->c, &q->decision->upgrade);
    return 0;
}

/* upgrade(req) [-0, +0, e] */
int lb_front_call_upgrade(lua_State *L)
{
    struct lb_event *e = lua_touserdata(L, 1);
    lb_push_ref(L, e->a->handlers[LB_UPGRADE]);
    push_request(L, e->c, e->req);
    lua_callk(L, 1, 4, 0, upgrade_returned);
    upgrade_results(L, e->c, e->upgrade);
    return 0;
}

/* Frees what an upgrade reply owns and empties it. */
static void clear_upgrade(struct ws_upgrade_reply *reply)
{
    free(reply->body);
    free(reply->headers);
    free(reply->protocol);
    memset(reply, 0, sizeof(*reply));
}

/* Frees what a route's reply (and its header lines being built) owns and empties it. */
static void clear_http(struct ws_http_reply *reply, struct ws_buf *headers)
{
    ws_buf_reset(headers);
    free(reply->body);
    free(reply->content_type);
    memset(reply, 0, sizeof(*reply));
}

void lb_front_fail_upgrade(struct ws_upgrade_reply *reply)
{
    clear_upgrade(reply);
    reply->status = 500;
}

void lb_front_fail_http(struct ws_http_reply *reply, struct ws_buf *headers)
{
    clear_http(reply, headers);
    reply->status = 500;
    reply->body = strdup("internal error\n");
    reply->body_len = strlen(reply->body);
}

/* ---- http: app.http routes ---- */

/* Reads a route's results (status, body, headers: the top three, its key below them) into
 * reply. [-0, +0, e] */
static void http_results(lua_State *L, struct ws_http_reply *reply, struct ws_buf *headers)
{
    int key = lua_gettop(L) - 3;
    int isnum = 0;
    lua_Integer status = lua_type(L, -3) == LUA_TNUMBER ? lua_tointegerx(L, -3, &isnum) : 0;
    if (!isnum || status < 100 || status > 599)
        luaL_error(L, "http route \"%s\" must return a status number from 100 to 599, got %s",
                   lua_tostring(L, key),
                   lua_type(L, -3) == LUA_TNUMBER ? luaL_tolstring(L, -3, NULL)
                                                  : luaL_typename(L, -3));
    if (!lua_isnil(L, -2) && lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "http route \"%s\" must return a string body (or nil), got %s",
                   lua_tostring(L, key), luaL_typename(L, -2));
    if (!lua_isnil(L, -1) && !lua_istable(L, -1))
        luaL_error(L, "http route \"%s\" must return a headers table (or nil), got %s",
                   lua_tostring(L, key), luaL_typename(L, -1));
    reply->status = (int)status;
    if (lua_type(L, -2) == LUA_TSTRING)
        reply->body = dup_string(L, -2, &reply->body_len);
    if (lua_istable(L, -1))
        collect_headers(L, lua_gettop(L), headers, &reply->content_type);
}

/* A route returned after waiting. [-0, +0, e] */
static int http_returned(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    struct lb_decision *d = waited(L)->decision;
    http_results(L, &d->http, &d->headers);
    return 0;
}

/* app.http["METHOD /path"](req) -> status, body, headers. The lookup is an ordinary (not raw)
 * index, so a routes table with an __index metamethod can dispatch. A status that is not a whole
 * number from 100 to 599, a body that is not a string (or nil) and headers that are not a table
 * (or nil) are the route's bug: raised here, so they are logged as its error and answered 500.
 * [-0, +0, e] */
int lb_front_call_http(lua_State *L)
{
    struct lb_event *e = lua_touserdata(L, 1);
    struct lb_app *a = e->a;
    const struct ws_http_request *req = e->req;
    const char *q = memchr(req->target.p, '?', req->target.n);
    size_t path_len = q ? (size_t)(q - req->target.p) : req->target.n;
    lb_push_ref(L, a->http_ref);
    bool head = ws_span_ieq(req->method, "HEAD");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addlstring(&b, head ? "GET" : req->method.p, head ? 3 : req->method.n);
    luaL_addchar(&b, ' ');
    luaL_addlstring(&b, req->target.p, path_len);
    luaL_pushresult(&b);
    int key = lua_gettop(L);
    lua_pushvalue(L, key);
    if (lua_gettable(L, key - 1) != LUA_TFUNCTION)
        return 0;
    e->routed = true;
    push_request(L, e->c, req);
    lua_callk(L, 1, 3, 0, http_returned);
    http_results(L, e->http, &e->headers);
    return 0;
}

void lb_decision_free(struct lb_decision *d)
{
    if (!d)
        return;
    clear_upgrade(&d->upgrade);
    clear_http(&d->http, &d->headers);
    free(d);
}
