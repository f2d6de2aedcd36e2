/* ws.pg's stand-in for ws.kitcore: a struct ws_pg_ops whose queries the spec answers
 * (kit_pg_answer_with) with rows of its own, which reach the app as the spec wrote them. Each
 * answer comes from the loop, after the delay the spec asks for on the simulated clock, so a
 * query's timeout races it as it would race a real server. */
#include "ws/kit.h"

#include "ws/clock.h"
#include "ws/pg_client.h"

#include <lauxlib.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define COPY_DEPTH 100 /* as kit_value_in copies */

/* The rows of an answer: the spec's table, kept in the spec's registry until the app takes it. */
struct kit_pg_rows {
    struct ws_pg_rows base; /* first: what lb_pg sees */
    struct kit_engine *e;
    int ref;
    lua_Integer count;
    char status[16];
};

struct ws_pg_pool {
    struct kit_engine *e;
    struct ws_pg_conn *conns; /* handed out */
    size_t in_use;
};

struct ws_pg_conn {
    ev_timer timer; /* first: the answer comes from the loop, after delay when the spec says so */
    struct ws_pg_pool *p;
    struct ws_pg_conn *prev, *next;
    bool busy, answered;
    ws_pg_result_fn done;
    void *ud;
    char *sql;
    int n;
    char **values; /* NULL: SQL NULL */
    int *lengths;
    struct kit_pg_rows *rows; /* the answer: rows, or NULL with err */
    char err[512];
    char sqlstate[6];
};

struct ws_pg_wait {
    ev_timer timer;
    struct ws_pg_pool *p;
    ws_pg_conn_fn done;
    void *ud;
};

static void rows_free(struct ws_pg_rows *base)
{
    struct kit_pg_rows *r = (struct kit_pg_rows *)base;
    if (r->e->L)
        luaL_unref(r->e->L, LUA_REGISTRYINDEX, r->ref);
    free(r);
}

/* The rows, as the spec gave them (their delay field left out), and the count. */
static int rows_push(struct ws_pg_rows *base, struct lua_State *L)
{
    struct kit_pg_rows *r = (struct kit_pg_rows *)base;
    lua_State *from = r->e->L;
    luaL_checkstack(from, 4, "ws.pg");
    luaL_checkstack(L, 4, "ws.pg");
    lua_rawgeti(from, LUA_REGISTRYINDEX, r->ref);
    lua_Integer n = (lua_Integer)lua_rawlen(from, -1);
    lua_newtable(L); /* the tables copied, by address */
    int map = lua_gettop(L);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(from, -1, i);
        kit_value_in(from, -1, L, map, r->e, 1);
        lua_rawseti(L, -2, i);
        lua_pop(from, 1);
    }
    lua_pop(from, 1);
    lua_remove(L, map);
    lua_pushinteger(L, r->count);
    return 2;
}

/* Whether the value at idx of L can reach the app: plain data. Fills why otherwise. */
static bool plain(lua_State *L, int idx, int depth, char *why, size_t whylen)
{
    idx = lua_absindex(L, idx);
    switch (lua_type(L, idx)) {
    case LUA_TBOOLEAN:
    case LUA_TNUMBER:
    case LUA_TSTRING:
    case LUA_TLIGHTUSERDATA:
        return true;
    case LUA_TTABLE:
        break;
    default:
        snprintf(why, whylen,
                 "a row holds a %s (rows hold numbers, strings, booleans, tables "
                 "and ws.null)",
                 luaL_typename(L, idx));
        return false;
    }
    bool has_mt = lua_getmetatable(L, idx);
    if (has_mt)
        lua_pop(L, 1);
    if (has_mt || depth > COPY_DEPTH || !lua_checkstack(L, 4)) {
        snprintf(why, whylen, "a row holds a table with a metatable or nested too deep");
        return false;
    }
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (!plain(L, -2, depth + 1, why, whylen) || !plain(L, -1, depth + 1, why, whylen)) {
            lua_pop(L, 2);
            return false;
        }
        lua_pop(L, 1);
    }
    return true;
}

static void answer_fail(struct ws_pg_conn *c, const char *msg, const char *sqlstate)
{
    snprintf(c->err, sizeof(c->err), "%s", msg);
    snprintf(c->sqlstate, sizeof(c->sqlstate), "%s", sqlstate ? sqlstate : "");
}

/* The command tag of sql: its first word in capitals. */
static void tag_of(const char *sql, char *out, size_t cap)
{
    while (*sql == ' ' || *sql == '\t' || *sql == '\n' || *sql == '\r' || *sql == '(')
        sql++;
    size_t n = 0;
    for (; n + 1 < cap && ((sql[n] | 32) >= 'a' && (sql[n] | 32) <= 'z'); n++)
        out[n] = (char)(sql[n] & ~32);
    out[n] = '\0';
}

/* Reads the stand-in's answer in the top three values of L: rows [, count] (rows.delay: seconds
 * before it comes), nothing (an empty result), or nil, err [, sqlstate]. Returns the delay.
 * [-0, +0, m] */
static double read_answer(lua_State *L, struct ws_pg_conn *c)
{
    int rows_at = lua_gettop(L) - 2;
    if (lua_isnil(L, rows_at) && lua_isnil(L, rows_at + 1)) {
        lua_newtable(L);
        lua_replace(L, rows_at);
    }
    if (!lua_istable(L, rows_at)) {
        if (lua_type(L, rows_at + 1) == LUA_TSTRING)
            answer_fail(c, lua_tostring(L, rows_at + 1),
                        lua_type(L, rows_at + 2) == LUA_TSTRING ? lua_tostring(L, rows_at + 2)
                                                                : NULL);
        else
            answer_fail(c, "the stand-in answered neither rows nor nil, err", NULL);
        return 0;
    }
    char why[160];
    lua_Integer n = (lua_Integer)lua_rawlen(L, rows_at);
    for (lua_Integer i = 1; i <= n; i++) {
        bool ok = lua_rawgeti(L, rows_at, i) == LUA_TTABLE;
        if (!ok)
            snprintf(why, sizeof(why), "row %lld is not a table", (long long)i);
        ok = ok && plain(L, -1, 1, why, sizeof(why));
        lua_pop(L, 1);
        if (!ok) {
            char msg[256];
            snprintf(msg, sizeof(msg), "the stand-in's rows: %s", why);
            answer_fail(c, msg, NULL);
            return 0;
        }
    }
    struct kit_pg_rows *r = ws_xcalloc(1, sizeof(*r));
    r->base.push = rows_push;
    r->base.free = rows_free;
    r->base.status = r->status;
    r->e = c->p->e;
    tag_of(c->sql, r->status, sizeof(r->status));
    r->count = lua_isinteger(L, rows_at + 1) ? lua_tointeger(L, rows_at + 1) : n;
    lua_getfield(L, rows_at, "delay");
    double delay = lua_isnumber(L, -1) ? lua_tonumber(L, -1) : 0;
    lua_pop(L, 1);
    lua_pushvalue(L, rows_at);
    r->ref = luaL_ref(L, LUA_REGISTRYINDEX);
    c->rows = r;
    return delay > 0 ? delay : 0;
}

/* Asks the spec's function for c's answer; returns its delay. */
static double ask(struct ws_pg_conn *c)
{
    struct kit_engine *e = c->p->e;
    lua_State *L = e->L;
    if (e->pg_fn == LUA_NOREF) {
        answer_fail(c, "no stand-in answers ws.pg in this test (on_pg)", NULL);
        return 0;
    }
    if (!lua_checkstack(L, c->n + 8)) {
        answer_fail(c, "the spec's stack is full", NULL);
        return 0;
    }
    lua_rawgeti(L, LUA_REGISTRYINDEX, e->pg_fn);
    lua_pushstring(L, c->sql);
    lua_createtable(L, c->n, 0);
    for (int i = 0; i < c->n; i++) {
        if (c->values[i])
            lua_pushlstring(L, c->values[i], (size_t)c->lengths[i]);
        else
            lua_pushlightuserdata(L, NULL); /* ws.null */
        lua_rawseti(L, -2, i + 1);
    }
    /* the spec's code runs in the spec's folder */
    bool moved = e->spec_dir >= 0 && fchdir(e->spec_dir) == 0;
    int rc = lua_pcall(L, 2, 3, 0);
    if (moved)
        (void)!chdir(e->dir);
    if (rc != LUA_OK) {
        answer_fail(c, lua_isstring(L, -1) ? lua_tostring(L, -1) : "the stand-in failed", NULL);
        lua_pop(L, 1);
        return 0;
    }
    double delay = read_answer(L, c);
    lua_pop(L, 3);
    return delay;
}

/* Forgets c's query: its parameters and any answer not handed over. */
static void clear_query(struct ws_pg_conn *c)
{
    ws_timer_stop(c->p->e->loop, &c->timer);
    for (int i = 0; i < c->n; i++)
        free(c->values[i]);
    free(c->values);
    free(c->lengths);
    free(c->sql);
    c->values = NULL;
    c->lengths = NULL;
    c->sql = NULL;
    c->n = 0;
    if (c->rows)
        rows_free(&c->rows->base);
    c->rows = NULL;
    c->busy = c->answered = false;
}

static void on_answer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_pg_conn *c = (struct ws_pg_conn *)w;
    if (!c->answered) {
        c->answered = true;
        double delay = ask(c);
        if (delay > 0) {
            ws_timer_start(c->p->e->loop, &c->timer, delay, 0);
            return;
        }
    }
    ws_pg_result_fn done = c->done;
    void *ud = c->ud;
    struct kit_pg_rows *rows = c->rows; /* the callback owns it now */
    char err[sizeof(c->err)], sqlstate[sizeof(c->sqlstate)];
    memcpy(err, c->err, sizeof(err));
    memcpy(sqlstate, c->sqlstate, sizeof(sqlstate));
    c->rows = NULL;
    clear_query(c);
    if (rows)
        done(ud, NULL, &rows->base, NULL, NULL);
    else
        done(ud, NULL, NULL, err, sqlstate);
}

static struct ws_pg_pool *standin_pool_new(struct ev_loop *loop, const char *conninfo,
                                           size_t max_conns, double connect_timeout, char *err,
                                           size_t errlen)
{
    (void)conninfo;
    (void)max_conns;
    (void)connect_timeout;
    struct kit_engine *e = kit_engine_of(loop);
    if (!e) {
        snprintf(err, errlen, "no engine runs this loop");
        return NULL;
    }
    struct ws_pg_pool *p = ws_xcalloc(1, sizeof(*p));
    p->e = e;
    return p;
}

/* The stand-in's pool has no cap: a connection is there whenever one is asked for. */
static void standin_pool_set_max(struct ws_pg_pool *p, size_t max_conns)
{
    (void)p;
    (void)max_conns;
}

static void standin_conn_release(struct ws_pg_conn *c)
{
    struct ws_pg_pool *p = c->p;
    clear_query(c);
    if (c->prev)
        c->prev->next = c->next;
    else
        p->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    p->in_use--;
    free(c);
}

static void standin_pool_free(struct ws_pg_pool *p)
{
    if (!p)
        return;
    while (p->conns)
        standin_conn_release(p->conns);
    free(p);
}

static struct ws_pg_conn *standin_pool_take(struct ws_pg_pool *p)
{
    struct ws_pg_conn *c = ws_xcalloc(1, sizeof(*c));
    c->p = p;
    ev_init(&c->timer, on_answer);
    c->next = p->conns;
    if (p->conns)
        p->conns->prev = c;
    p->conns = c;
    p->in_use++;
    return c;
}

static void on_acquired(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct ws_pg_wait *wt = (struct ws_pg_wait *)w;
    ws_pg_conn_fn done = wt->done;
    void *ud = wt->ud;
    struct ws_pg_conn *c = standin_pool_take(wt->p);
    free(wt);
    done(ud, c, NULL);
}

static struct ws_pg_wait *standin_pool_acquire(struct ws_pg_pool *p, ws_pg_conn_fn done, void *ud)
{
    struct ws_pg_wait *w = ws_xcalloc(1, sizeof(*w));
    w->p = p;
    w->done = done;
    w->ud = ud;
    ev_init(&w->timer, on_acquired);
    ws_timer_start(p->e->loop, &w->timer, 0, 0); /* from the loop, never from in here */
    return w;
}

static void standin_pool_acquire_cancel(struct ws_pg_wait *w)
{
    ws_timer_stop(w->p->e->loop, &w->timer);
    free(w);
}

static int standin_conn_query(struct ws_pg_conn *c, const char *sql, int n,
                              const char *const *values, const int *lengths, const int *formats,
                              bool prepare, ws_pg_result_fn done, void *ud, char *err,
                              size_t errlen)
{
    (void)formats;
    (void)prepare;
    if (c->busy) {
        snprintf(err, errlen, "the connection is busy");
        return -1;
    }
    c->busy = true;
    c->done = done;
    c->ud = ud;
    c->err[0] = c->sqlstate[0] = '\0';
    c->sql = ws_xstrndup(sql, strlen(sql));
    c->n = n;
    c->values = ws_xcalloc((size_t)n + 1, sizeof(*c->values));
    c->lengths = ws_xcalloc((size_t)n + 1, sizeof(*c->lengths));
    for (int i = 0; i < n; i++) {
        if (!values[i])
            continue;
        c->values[i] = ws_xmalloc((size_t)lengths[i] + 1);
        memcpy(c->values[i], values[i], (size_t)lengths[i]);
        c->lengths[i] = lengths[i];
    }
    ws_timer_start(c->p->e->loop, &c->timer, 0, 0); /* answered from the loop */
    return 0;
}

static bool standin_conn_abandon(struct ws_pg_conn *c)
{
    bool busy = c->busy;
    clear_query(c);
    return busy;
}

static bool standin_conn_ready(const struct ws_pg_conn *c)
{
    (void)c;
    return true;
}

static size_t standin_pool_in_use(const struct ws_pg_pool *p)
{
    return p->in_use;
}

static const struct ws_pg_ops standin_ops = {
    standin_pool_new,     standin_pool_set_max, standin_pool_free,
    standin_pool_take,    standin_pool_acquire, standin_pool_acquire_cancel,
    standin_conn_query,   standin_conn_abandon, standin_conn_ready,
    standin_conn_release, standin_pool_in_use,  /* open */ standin_pool_in_use,
};

void kit_pg_install(struct lb_app *a)
{
    a->pg_ops = &standin_ops;
}

void kit_pg_answer_with(struct kit_engine *e, lua_State *L)
{
    lua_State *owner = L ? L : e->L;
    if (owner)
        luaL_unref(owner, LUA_REGISTRYINDEX, e->pg_fn);
    e->pg_fn = LUA_NOREF;
    if (!L)
        return;
    if (lua_isnil(L, -1))
        lua_pop(L, 1);
    else
        e->pg_fn = luaL_ref(L, LUA_REGISTRYINDEX);
}
