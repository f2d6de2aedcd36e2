/* ws.http's stand-in for ws.kitcore: a struct ws_http_client_ops whose requests the spec
 * answers (kit_http_answer_with). Each answer comes from the loop, after the delay the spec asks
 * for on the simulated clock, so a call's timeout races it as it would race a real upstream. */
#include "ws/kit.h"

#include "ws/buf.h"
#include "ws/clock.h"
#include "ws/http_client.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct kit_http_req {
    ev_timer timer; /* first: the answer comes from the loop, after delay when the spec says so */
    struct kit_engine *e;
    ws_http_done_fn done;
    void *ud;
    char *method, *url, *body;
    size_t body_len;
    char **headers;
    size_t nheaders;
    double started;
    bool answered; /* res is filled; waiting for its delay */
    struct ws_http_result res;
    struct kit_http_req *prev, *next;
};

static void standin_forget(struct kit_http_req *r)
{
    struct kit_engine *e = r->e;
    ws_timer_stop(e->loop, &r->timer);
    if (r->prev)
        r->prev->next = r->next;
    else
        e->requests = r->next;
    if (r->next)
        r->next->prev = r->prev;
    for (size_t i = 0; i < r->nheaders; i++)
        free(r->headers[i]);
    free(r->headers);
    free(r->method);
    free(r->url);
    free(r->body);
    free(r);
}

/* Pushes the request as the spec sees it: {method =, url =, headers = {name = value}, body =}
 * (names lower-cased). [-0, +1, m] */
static void push_request(lua_State *L, const struct kit_http_req *r)
{
    lua_createtable(L, 0, 4);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, r->url);
    lua_setfield(L, -2, "url");
    lua_newtable(L);
    for (size_t i = 0; i < r->nheaders; i++) {
        const char *h = r->headers[i], *colon = strchr(h, ':');
        if (!colon)
            continue;
        luaL_Buffer b;
        luaL_buffinit(L, &b);
        for (const char *p = h; p < colon; p++)
            luaL_addchar(&b, (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p));
        luaL_pushresult(&b);
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        lua_pushstring(L, v);
        lua_rawset(L, -3);
    }
    lua_setfield(L, -2, "headers");
    if (r->body) {
        lua_pushlstring(L, r->body, r->body_len);
        lua_setfield(L, -2, "body");
    }
}

static void standin_fail(struct kit_http_req *r, const char *msg)
{
    r->res.ok = false;
    snprintf(r->res.err, sizeof(r->res.err), "%s", msg);
}

/* Reads the stand-in's answer below the top two values: {status =, headers =, body =, delay =}
 * or nil, err. Returns the delay in seconds. [-0, +0, m] */
static double read_answer(lua_State *L, struct kit_http_req *r)
{
    if (!lua_istable(L, -2)) {
        standin_fail(r,
                     lua_isstring(L, -1) ? lua_tostring(L, -1) : "the stand-in answered nothing");
        return 0;
    }
    r->res.ok = true;
    lua_getfield(L, -2, "status");
    r->res.status = lua_isinteger(L, -1) ? (long)lua_tointeger(L, -1) : 200;
    lua_pop(L, 1);
    char line[64];
    int n = snprintf(line, sizeof(line), "HTTP/1.1 %ld\r\n", r->res.status);
    ws_buf_append(&r->res.headers, line, (size_t)n);
    lua_getfield(L, -2, "headers");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -2) == LUA_TSTRING && lua_isstring(L, -1)) {
                size_t kn, vn;
                const char *k = lua_tolstring(L, -2, &kn), *v = lua_tolstring(L, -1, &vn);
                ws_buf_append(&r->res.headers, k, kn);
                ws_buf_append(&r->res.headers, ": ", 2);
                ws_buf_append(&r->res.headers, v, vn);
                ws_buf_append(&r->res.headers, "\r\n", 2);
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    lua_getfield(L, -2, "body");
    size_t bn = 0;
    const char *body = lua_isstring(L, -1) ? lua_tolstring(L, -1, &bn) : NULL;
    if (body)
        ws_buf_append(&r->res.body, body, bn);
    lua_pop(L, 1);
    lua_getfield(L, -2, "delay");
    double delay = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
    lua_pop(L, 1);
    return delay > 0 ? delay : 0;
}

static void on_standin(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct kit_http_req *r = (struct kit_http_req *)w;
    struct kit_engine *e = r->e;
    if (!r->answered) {
        r->answered = true;
        lua_State *L = e->L;
        double delay = 0;
        if (e->http_fn == LUA_NOREF) {
            standin_fail(r, "no stand-in answers ws.http in this test (on_http)");
        } else if (!lua_checkstack(L, 8)) {
            standin_fail(r, "the spec's stack is full");
        } else {
            lua_rawgeti(L, LUA_REGISTRYINDEX, e->http_fn);
            push_request(L, r);
            /* the spec's code runs in the spec's folder */
            bool moved = e->spec_dir >= 0 && fchdir(e->spec_dir) == 0;
            int rc = lua_pcall(L, 1, 2, 0);
            if (moved)
                (void)!chdir(e->dir);
            if (rc != LUA_OK) {
                standin_fail(r, lua_isstring(L, -1) ? lua_tostring(L, -1) : "the stand-in failed");
                lua_pop(L, 1);
            } else {
                delay = read_answer(L, r);
                lua_pop(L, 2);
            }
        }
        if (delay > 0) {
            ws_timer_start(e->loop, &r->timer, delay, 0);
            return;
        }
    }
    r->res.seconds = ws_clock_now(e->loop) - r->started;
    ws_http_done_fn done = r->done;
    void *ud = r->ud;
    struct ws_http_result res = r->res; /* the callback owns the buffers now */
    standin_forget(r);
    done(ud, &res);
}

static struct ws_http_req *standin_request(struct ws_http_client *hc, const struct ws_http_opts *o,
                                           ws_http_done_fn done, void *ud, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct kit_engine *e = (struct kit_engine *)hc;
    struct kit_http_req *r = ws_xcalloc(1, sizeof(*r));
    r->e = e;
    r->done = done;
    r->ud = ud;
    const char *method = o->method ? o->method : "GET";
    r->method = ws_xstrndup(method, strlen(method));
    r->url = ws_xstrndup(o->url, strlen(o->url));
    if (o->body) {
        r->body = ws_xmalloc(o->body_len + 1);
        memcpy(r->body, o->body, o->body_len);
        r->body_len = o->body_len;
    }
    r->headers = ws_xcalloc(o->nheaders + 1, sizeof(*r->headers));
    for (size_t i = 0; i < o->nheaders; i++)
        r->headers[r->nheaders++] = ws_xstrndup(o->headers[i], strlen(o->headers[i]));
    ws_buf_init(&r->res.headers);
    ws_buf_init(&r->res.body);
    r->started = ws_clock_now(e->loop);
    r->next = e->requests;
    if (e->requests)
        e->requests->prev = r;
    e->requests = r;
    ev_init(&r->timer, on_standin);
    ws_timer_start(e->loop, &r->timer, 0, 0); /* answered from the loop, never from in here */
    return (struct ws_http_req *)r;
}

static void standin_cancel(struct ws_http_req *req)
{
    struct kit_http_req *r = (struct kit_http_req *)req;
    if (r->answered)
        ws_http_result_free(&r->res);
    standin_forget(r);
}

static void standin_set_max(struct ws_http_client *hc, size_t max_concurrent)
{
    (void)hc;
    (void)max_concurrent;
}

static void standin_free(struct ws_http_client *hc)
{
    struct kit_engine *e = (struct kit_engine *)hc;
    while (e->requests)
        standin_cancel((struct ws_http_req *)e->requests);
}

static const struct ws_http_client_ops standin_ops = {
    standin_request,
    standin_cancel,
    standin_set_max,
    standin_free,
};

void kit_http_install(struct kit_engine *e, struct lb_app *a)
{
    a->http = (struct ws_http_client *)e;
    a->http_ops = &standin_ops;
}

void kit_http_answer_with(struct kit_engine *e, lua_State *L)
{
    lua_State *owner = L ? L : e->L;
    if (owner)
        luaL_unref(owner, LUA_REGISTRYINDEX, e->http_fn);
    e->http_fn = LUA_NOREF;
    if (!L)
        return;
    if (lua_isnil(L, -1))
        lua_pop(L, 1);
    else
        e->http_fn = luaL_ref(L, LUA_REGISTRYINDEX);
}
