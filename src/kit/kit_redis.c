/* ws.redis's stand-in for ws.kitcore: a struct ws_redis_ops whose pools all reach the engine's
 * in-memory Redis (kit_redis_db.c). Replies and published messages come from the loop, in the
 * order the commands were sent, never from inside the call; nothing reaches the network. */
#include "ws/kit.h"

#include "kit_redis.h"

#include "ws/buf.h"
#include "ws/clock.h"
#include "ws/redis_client.h"

#include <lauxlib.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct kit_redis_pool;

/* A request waiting for its turn: its commands, copied. */
struct kit_redis_req {
    struct kit_redis_pool *pool;
    ws_redis_done_fn done;
    void *ud;
    size_t ncmds, nargs;
    int *argc;
    char **argv;
    size_t *argvlen;
    struct kit_redis_req *prev, *next;
};

struct kit_redis_sub {
    struct kit_redis_pool *pool;
    char *channel;
    size_t len;
    ws_redis_message_fn fn;
    void *ud;
    struct kit_redis_sub *prev, *next;
};

/* A message on its way to one subscription. */
struct kit_redis_msg {
    struct kit_redis_sub *sub;
    char *channel, *msg;
    size_t channel_len, len;
    struct kit_redis_msg *next;
};

struct kit_redis_pool {
    struct kit_redis *db;
    size_t busy; /* requests waiting */
    struct kit_redis_sub *subs;
    struct kit_redis_pool *prev, *next;
};

struct kit_redis {
    ev_timer tick; /* first: runs the queue from the loop */
    struct kit_engine *e;
    struct kit_rdb *data;
    bool enabled;
    int fn; /* the spec's t:on_redis function (a registry ref), or LUA_NOREF */
    struct kit_redis_req *head, *tail;     /* requests, oldest first */
    struct kit_redis_msg *msgs, *msgs_end; /* messages, oldest first */
    struct kit_redis_pool *pools;
};

static char *copy(const char *p, size_t n)
{
    char *s = ws_xmalloc(n + 1);
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

static void wake(struct kit_redis *db)
{
    if (!ev_is_active(&db->tick))
        ws_timer_start(db->e->loop, &db->tick, 0, 0);
}

static long long now_ms(const struct kit_redis *db)
{
    return llround(ws_clock_now(db->e->loop) * 1000);
}

/* ---- pub/sub ---- */

static size_t publish(void *ud, const char *channel, size_t channel_len, const char *msg,
                      size_t len)
{
    struct kit_redis *db = ud;
    size_t n = 0;
    for (struct kit_redis_pool *p = db->pools; p; p = p->next)
        for (struct kit_redis_sub *s = p->subs; s; s = s->next) {
            if (s->len != channel_len || memcmp(s->channel, channel, channel_len) != 0)
                continue;
            struct kit_redis_msg *m = ws_xcalloc(1, sizeof(*m));
            m->sub = s;
            m->channel = copy(channel, channel_len);
            m->channel_len = channel_len;
            m->msg = copy(msg, len);
            m->len = len;
            if (db->msgs_end)
                db->msgs_end->next = m;
            else
                db->msgs = m;
            db->msgs_end = m;
            n++;
        }
    if (n)
        wake(db);
    return n;
}

static void msg_free(struct kit_redis_msg *m)
{
    free(m->channel);
    free(m->msg);
    free(m);
}

/* Drops the messages still on their way to s (all of them when s is NULL). */
static void drop_msgs(struct kit_redis *db, const struct kit_redis_sub *s)
{
    struct kit_redis_msg **at = &db->msgs, *last = NULL;
    while (*at) {
        struct kit_redis_msg *m = *at;
        if (!s || m->sub == s) {
            *at = m->next;
            msg_free(m);
        } else {
            last = m;
            at = &m->next;
        }
    }
    db->msgs_end = last;
}

static struct ws_redis_sub *standin_subscribe(struct ws_redis *r, const char *channel, size_t len,
                                              ws_redis_message_fn fn, void *ud)
{
    struct kit_redis_pool *p = (struct kit_redis_pool *)r;
    struct kit_redis_sub *s = ws_xcalloc(1, sizeof(*s));
    s->pool = p;
    s->channel = copy(channel, len);
    s->len = len;
    s->fn = fn;
    s->ud = ud;
    s->next = p->subs;
    if (p->subs)
        p->subs->prev = s;
    p->subs = s;
    return (struct ws_redis_sub *)s;
}

static void standin_unsubscribe(struct ws_redis_sub *sub)
{
    struct kit_redis_sub *s = (struct kit_redis_sub *)sub;
    drop_msgs(s->pool->db, s);
    if (s->prev)
        s->prev->next = s->next;
    else
        s->pool->subs = s->next;
    if (s->next)
        s->next->prev = s->prev;
    free(s->channel);
    free(s);
}

/* ---- requests ---- */

static void req_forget(struct kit_redis_req *q)
{
    struct kit_redis *db = q->pool->db;
    if (q->prev)
        q->prev->next = q->next;
    else
        db->head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        db->tail = q->prev;
    q->pool->busy--;
    for (size_t i = 0; i < q->nargs; i++)
        free(q->argv[i]);
    free(q->argv);
    free(q->argvlen);
    free(q->argc);
    free(q);
}

/* Runs q on the data and hands its replies to its owner. */
static void answer(struct kit_redis_req *q)
{
    struct kit_redis *db = q->pool->db;
    struct ws_redis_result res = {.ok = true, .n = q->ncmds};
    res.values = ws_xcalloc(q->ncmds, sizeof(*res.values));
    kit_rdb_run(db->data, now_ms(db), q->ncmds, q->argc, (const char *const *)q->argv, q->argvlen,
                res.values);
    ws_redis_done_fn done = q->done;
    void *ud = q->ud;
    req_forget(q);
    done(ud, &res);
}

/* The requests and messages there were when the loop came here, in order: what they set off
 * (a handler's next command) waits for the next round, as it would for the network. */
static void on_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct kit_redis *db = (struct kit_redis *)w;
    struct kit_redis_req *last = db->tail;
    while (last && db->head) {
        struct kit_redis_req *q = db->head;
        bool end = q == last;
        answer(q);
        if (end)
            break;
    }
    struct kit_redis_msg *last_msg = db->msgs_end;
    while (last_msg && db->msgs) {
        struct kit_redis_msg *m = db->msgs;
        db->msgs = m->next;
        if (!db->msgs)
            db->msgs_end = NULL;
        m->sub->fn(m->sub->ud, m->channel, m->channel_len, m->msg, m->len);
        bool end = m == last_msg;
        msg_free(m);
        if (end)
            break;
    }
    if (db->head || db->msgs)
        wake(db);
}

static struct ws_redis_req *standin_command(struct ws_redis *r, size_t ncmds, const int *argc,
                                            const char *const *argv, const size_t *argvlen,
                                            ws_redis_done_fn done, void *ud, char *err,
                                            size_t errlen)
{
    struct kit_redis_pool *p = (struct kit_redis_pool *)r;
    struct kit_redis *db = p->db;
    if (!db->enabled) {
        snprintf(err, errlen, "no stand-in answers ws.redis in this test (t:redis())");
        return NULL;
    }
    struct kit_redis_req *q = ws_xcalloc(1, sizeof(*q));
    q->pool = p;
    q->done = done;
    q->ud = ud;
    q->ncmds = ncmds;
    q->argc = ws_xcalloc(ncmds, sizeof(*q->argc));
    for (size_t i = 0; i < ncmds; i++) {
        q->argc[i] = argc[i];
        q->nargs += (size_t)argc[i];
    }
    q->argv = ws_xcalloc(q->nargs, sizeof(*q->argv));
    q->argvlen = ws_xcalloc(q->nargs, sizeof(*q->argvlen));
    for (size_t i = 0; i < q->nargs; i++) {
        q->argv[i] = copy(argv[i], argvlen[i]);
        q->argvlen[i] = argvlen[i];
    }
    q->prev = db->tail;
    if (db->tail)
        db->tail->next = q;
    else
        db->head = q;
    db->tail = q;
    p->busy++;
    wake(db); /* answered from the loop, never from in here */
    return (struct ws_redis_req *)q;
}

static void standin_cancel(struct ws_redis_req *req, bool close)
{
    (void)close;
    req_forget((struct kit_redis_req *)req);
}

/* ---- pools ---- */

static struct ws_redis *standin_create(struct ev_loop *loop, const struct ws_redis_addr *addr,
                                       size_t pool, double connect_timeout)
{
    (void)addr;
    (void)pool;
    (void)connect_timeout;
    struct kit_engine *e = kit_engine_of(loop);
    struct kit_redis *db = e ? e->redis : NULL;
    if (!db) /* an engine always has one before its app loads */
        abort();
    struct kit_redis_pool *p = ws_xcalloc(1, sizeof(*p));
    p->db = db;
    p->next = db->pools;
    if (db->pools)
        db->pools->prev = p;
    db->pools = p;
    return (struct ws_redis *)p;
}

static void standin_free(struct ws_redis *r)
{
    struct kit_redis_pool *p = (struct kit_redis_pool *)r;
    if (!p)
        return;
    struct kit_redis *db = p->db;
    for (struct kit_redis_req *q = db->head, *next; q; q = next) {
        next = q->next;
        if (q->pool == p)
            req_forget(q);
    }
    while (p->subs)
        standin_unsubscribe((struct ws_redis_sub *)p->subs);
    if (p->prev)
        p->prev->next = p->next;
    else
        db->pools = p->next;
    if (p->next)
        p->next->prev = p->prev;
    free(p);
}

static size_t standin_open(const struct ws_redis *r)
{
    return ((const struct kit_redis_pool *)r)->db->enabled ? 1 : 0;
}

static size_t standin_busy(const struct ws_redis *r)
{
    return ((const struct kit_redis_pool *)r)->busy;
}

static const struct ws_redis_ops standin_ops = {
    standin_create,    standin_free,        standin_command, standin_cancel,
    standin_subscribe, standin_unsubscribe, standin_open,    standin_busy,
};

void kit_redis_install(struct lb_app *a)
{
    a->redis_ops = &standin_ops;
}

/* ---- the engine ---- */

void kit_redis_attach(struct kit_engine *e)
{
    struct kit_redis *db = ws_xcalloc(1, sizeof(*db));
    ev_init(&db->tick, on_tick);
    db->e = e;
    db->data = kit_rdb_new(publish, db);
    db->fn = LUA_NOREF;
    e->redis = db;
}

void kit_redis_detach(struct kit_engine *e)
{
    struct kit_redis *db = e->redis;
    if (!db)
        return;
    while (db->pools) /* the app is gone: a pool left would be a leak of the binding's */
        standin_free((struct ws_redis *)db->pools);
    drop_msgs(db, NULL);
    ws_timer_stop(e->loop, &db->tick);
    kit_redis_answer_with(e, NULL);
    kit_rdb_free(db->data);
    free(db);
    e->redis = NULL;
}

void kit_redis_enable(struct kit_engine *e)
{
    e->redis->enabled = true;
}

/* Makes v from the stand-in's reply at idx of L: a string, an integer, null (a nil reply), a list
 * (an array; {false, message} in it an error). Anything else becomes an error reply naming it. */
static void read_reply(lua_State *L, int idx, int depth, struct ws_redis_value *v)
{
    int type = lua_type(L, idx);
    if (type == LUA_TNUMBER && lua_isinteger(L, idx)) {
        kit_rdb_int(v, (long long)lua_tointeger(L, idx));
    } else if (type == LUA_TSTRING || type == LUA_TNUMBER) {
        size_t n;
        const char *p = lua_tolstring(L, idx, &n);
        kit_rdb_reply(v, WS_REDIS_STRING, p, n);
    } else if (type == LUA_TLIGHTUSERDATA) {
        v->kind = WS_REDIS_NIL; /* json.null, ws.null */
    } else if (type == LUA_TTABLE && depth < 32 && lua_checkstack(L, 4)) {
        lua_rawgeti(L, idx, 1);
        bool error = lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1);
        lua_pop(L, 1);
        if (error) {
            lua_rawgeti(L, idx, 2);
            size_t n = 0;
            const char *p = lua_isstring(L, -1) ? lua_tolstring(L, -1, &n) : "ERR";
            kit_rdb_reply(v, WS_REDIS_ERROR, p, n ? n : strlen(p));
            lua_pop(L, 1);
            return;
        }
        size_t n = (size_t)lua_rawlen(L, idx);
        struct ws_redis_value *el = kit_rdb_array(v, n);
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, idx, (lua_Integer)i + 1);
            read_reply(L, lua_gettop(L), depth + 1, &el[i]);
            lua_pop(L, 1);
        }
    } else {
        kit_rdb_error(v, "ERR on_redis answered a %s", luaL_typename(L, idx));
    }
}

/* The spec's t:on_redis function, asked from the loop: fn(command) with command = {name, arg,
 * ...} returns nothing (the data answers), a reply, or nil, err (an error reply). */
static bool ask_spec(void *ud, size_t argc, const struct kit_rstr *argv, struct ws_redis_value *out)
{
    struct kit_redis *db = ud;
    struct kit_engine *e = db->e;
    lua_State *L = e->L;
    if (!L || !lua_checkstack(L, 8))
        return false;
    int top = lua_gettop(L);
    lua_rawgeti(L, LUA_REGISTRYINDEX, db->fn);
    lua_createtable(L, (int)argc, 0);
    for (size_t i = 0; i < argc; i++) {
        lua_pushlstring(L, argv[i].p, argv[i].n);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    bool moved = e->spec_dir >= 0 && fchdir(e->spec_dir) == 0; /* the spec's code, its folder */
    int rc = lua_pcall(L, 1, LUA_MULTRET, 0);
    if (moved)
        (void)!chdir(e->dir);
    bool answered = true;
    if (rc != LUA_OK) {
        const char *msg = lua_isstring(L, -1) ? lua_tostring(L, -1) : "the stand-in failed";
        kit_rdb_error(out, "ERR on_redis: %s", msg);
    } else if (lua_gettop(L) == top) {
        answered = false; /* nothing: the data answers */
    } else if (lua_isnil(L, top + 1)) {
        const char *msg = lua_isstring(L, top + 2) ? lua_tostring(L, top + 2) : "ERR";
        kit_rdb_reply(out, WS_REDIS_ERROR, msg, strlen(msg));
    } else {
        read_reply(L, top + 1, 0, out);
    }
    lua_settop(L, top);
    return answered;
}

void kit_redis_answer_with(struct kit_engine *e, lua_State *L)
{
    struct kit_redis *db = e->redis;
    lua_State *owner = L ? L : e->L;
    if (owner)
        luaL_unref(owner, LUA_REGISTRYINDEX, db->fn);
    db->fn = LUA_NOREF;
    kit_rdb_answer_with(db->data, NULL, NULL);
    if (!L)
        return;
    if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        return;
    }
    db->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    kit_rdb_answer_with(db->data, ask_spec, db);
}

int kit_redis_push_call(struct kit_engine *e, lua_State *L, int first, int n, int null)
{
    struct kit_redis *db = e->redis;
    const char **argv = lua_newuserdatauv(L, (size_t)n * sizeof(*argv), 0);
    size_t *argvlen = lua_newuserdatauv(L, (size_t)n * sizeof(*argvlen), 0);
    for (int i = 0; i < n; i++)
        argv[i] = lua_tolstring(L, first + i, &argvlen[i]);
    struct ws_redis_result res = {.ok = true, .n = 1};
    res.values = ws_xcalloc(1, sizeof(*res.values));
    kit_rdb_answer_with(db->data, NULL, NULL); /* the spec reaches the data itself */
    kit_rdb_run(db->data, now_ms(db), 1, &n, argv, argvlen, res.values);
    if (db->fn != LUA_NOREF)
        kit_rdb_answer_with(db->data, ask_spec, db);
    lua_pop(L, 2);
    int pushed = 1;
    if (res.values[0].kind == WS_REDIS_ERROR) {
        lua_pushnil(L);
        lua_pushlstring(L, res.values[0].str, res.values[0].len);
        pushed = 2;
    } else {
        lb_redis_push_reply(L, &res.values[0],
                            null); /* may raise: res would leak, for want of memory */
    }
    ws_redis_result_free(&res);
    return pushed;
}
