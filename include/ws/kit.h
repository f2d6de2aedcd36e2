/* The parts of ws.kitcore (src/kit), the real server in-process for Lua specs: the engine (the
 * server and its app on a loop with a simulated clock, clients on in-memory connections) and the
 * stand-ins that answer for outside services, one file each (kit_http.c: ws.http; kit_pg.c:
 * ws.pg; kit_redis.c: ws.redis, an in-memory Redis). A stand-in replaces the client's ops table in
 * struct lb_app and asks a function of the spec's, in the spec's Lua state, always from the loop
 * and on the simulated clock. */
#ifndef WS_KIT_H
#define WS_KIT_H

#include "ws/lb.h"
#include "ws/mempipe.h"
#include "ws/server.h"
#include "ws/wsclient.h"

#include <ev.h>
#include <lua.h>
#include <stddef.h>
#include <stdint.h>

struct kit_client {
    struct ws_mempipe *pipe;
    uint64_t id; /* the server's connection id */
};

struct kit_http_req;
struct kit_redis;
struct kit_upstream;

struct kit_engine {
    struct kit_engine *next; /* the process's engines (kit_engine_of) */
    struct ev_loop *loop;
    struct lb_app *app;
    struct ws_server *srv;
    char dir[64];  /* the app file when given as source, the (unused) listener, the log */
    char name[64]; /* the app file's name in dir when given as source ("" otherwise) */
    struct kit_client *clients;
    size_t nclients, cap;
    lua_State *L; /* the spec's thread in the engine call running now */
    int spec_dir; /* while the loop runs in an app's folder: the spec's, to call it there */
    int http_fn;  /* the spec's ws.http stand-in (a registry ref), or LUA_NOREF */
    struct kit_http_req *requests; /* ws.http calls the stand-in has not answered yet */
    int pg_fn;                     /* the spec's ws.pg stand-in (a registry ref), or LUA_NOREF */
    struct kit_redis *redis;       /* the in-memory Redis ws.redis reaches (kit_redis.c) */

    /* ws.connect's stand-ins (kit_upstream.c), newest first, and how the app reaches them */
    struct kit_upstream *upstreams;
    lua_Integer nupstreams;
    struct ws_client_net net;
};

/* ---- kit_engine.c: an engine's life: made from an app, settled, freed ---- */

/* The metatable of an engine's userdata (kitcore.c fills it, kit_load sets it). */
#define KIT_ENGINE_MT "ws.kitcore.engine"

/* kitcore.load(path_or_source [, {config = {name = value}, now = seconds, name = file}]) ->
 * engine, or nil, err, log when the server refuses the app (the log holds its reason). */
int kit_load(lua_State *L);

/* Runs e's loop without waiting until nothing moves: what the last input set off is done. */
void kit_settle(struct kit_engine *e);

/* The engine whose loop is loop (a stand-in's pool is made knowing only its loop), or NULL. */
struct kit_engine *kit_engine_of(struct ev_loop *loop);

/* lb_app_standins (kitcore.c sets the hook): the outside services of the app kit_load is making
 * answer from the spec. Does nothing for an app made otherwise. */
void kit_install_standins(struct lb_app *a);

/* When e's app was given as source: goes into its folder (loads and reloads run there) and
 * returns the descriptor of the folder to go back to; -1 otherwise or when it cannot. */
int kit_in_app_dir(const struct kit_engine *e);

/* Goes back to cwd from kit_in_app_dir and closes it; -1 is a no-op. */
void kit_back_from_app_dir(int cwd);

/* Frees what e holds (server, app, stand-ins, clients, loop, its folder), not e itself (a Lua
 * userdata). No-op when e is already freed. */
void kit_free_engine(struct kit_engine *e);

/* ---- kit_value.c: data copied and handles between the spec's state and the app's ---- */

/* Where kit_value_out copies to: the spec's state, a table there of the tables copied so far (by
 * address), the engine's userdata there (its first user value caches the handles). */
struct kit_copy {
    lua_State *to;
    int map, engine;
    struct kit_engine *e;
    const char *name; /* the field read, for a handle made now (or NULL) */
};

/* Pushes onto c->to the value at idx of L (the app's state): nil, booleans, numbers, strings,
 * bare pointers (lightuserdata: ws.null) and tables without a metatable copied (deeply, at most 100
 * levels), anything else as a handle that runs what the spec does with it on the object in the
 * app's state. Raises in L (run it under lb_protect). [-0, +0, v] (on L); [-0, +1, m] (on c->to) */
void kit_value_out(lua_State *L, int idx, struct kit_copy *c, int depth);

/* Pushes onto L (the app's state) a copy of the value at idx of the spec's state from: handles
 * become their objects again, tables are copied deeply (map: a table on L of those copied, by
 * address). Raises in L. [-0, +1, e] (on L) */
void kit_value_in(lua_State *from, int idx, lua_State *L, int map, struct kit_engine *e, int depth);

/* Registers the handles' metatable in L. [-0, +0, m] */
void kit_value_open(lua_State *L);

/* ---- kit_http.c, kit_pg.c: ws.http's and ws.pg's stand-ins ---- */

/* The stand-ins are installed on an app by kit_engine.c before the app's code first runs (the
 * lb_app_standins hook), so what its chunk and load() make reaches them too. */

/* Makes e's app a send its ws.http calls to the stand-in. */
void kit_http_install(struct kit_engine *e, struct lb_app *a);

/* The function on top of L's stack (or nil; L NULL: none, at the end) answers the app's ws.http
 * calls from now on: fn(req) with req = {method =, url =, headers =, body =} returns {status =,
 * headers =, body =, delay = seconds} or nil, err. Without one a call answers nil and an error
 * naming on_http. Pops the value. [-1, +0, m] */
void kit_http_answer_with(struct kit_engine *e, lua_State *L);

/* Makes the app a send its ws.pg calls to the stand-in of the engine its pools' loop belongs to. */
void kit_pg_install(struct lb_app *a);

/* The function on top of L's stack (or nil; L NULL: none, at the end) answers the app's ws.pg
 * queries from now on: fn(sql, params) with params the values as the server would receive them
 * (strings, ws.null for NULL) returns rows [, count] (rows.delay = seconds before the answer),
 * nothing (no rows), or nil, err [, sqlstate]. Without one a query answers nil and an error
 * naming on_pg. Pops the value. [-1, +0, m] */
void kit_pg_answer_with(struct kit_engine *e, lua_State *L);

/* ---- kit_redis.c: ws.redis's stand-in, an in-memory Redis per engine ---- */

/* Gives e its in-memory Redis (before its app loads). Until kit_redis_enable, commands fail
 * with an error naming t:redis(); subscriptions are kept. */
void kit_redis_attach(struct kit_engine *e);

/* Makes the app a send its ws.redis calls to the in-memory Redis of its loop's engine. */
void kit_redis_install(struct lb_app *a);

/* Frees e's Redis and what it holds (after its app is freed). No-op when there is none. */
void kit_redis_detach(struct kit_engine *e);

/* From now on e's Redis answers commands. */
void kit_redis_enable(struct kit_engine *e);

/* The function on top of L's stack (or nil; L NULL: none, at the end) is asked first for each
 * command e's Redis runs for the app: fn({name, arg, ...}) returns nothing (the data answers),
 * a reply (a string, an integer, null, a list), or nil, err (an error reply). Pops the value.
 * [-1, +0, m] */
void kit_redis_answer_with(struct kit_engine *e, lua_State *L);

/* Runs the command of the n strings from stack index first of L at once on e's Redis and pushes
 * its reply as ws.redis gives it (null for a nil reply), or nil and the text of an error reply.
 * [-0, +1|+2, m] */
int kit_redis_push_call(struct kit_engine *e, lua_State *L, int first, int n, int null);

/* ---- kit_upstream.c: ws.connect's stand-in, upstream servers declared by URL ---- */

/* Makes the app a connect ws.connect to e's upstreams instead of the network: a URL without one
 * fails at once with an error naming t:upstream. */
void kit_upstream_install(struct kit_engine *e, struct lb_app *a);

/* Answers what the app's clients wrote to the upstreams since the last call (kit_settle's
 * rounds). */
void kit_upstream_pump(struct kit_engine *e);

/* Bytes moved on the upstreams' pipes so far (kit_settle's "did anything happen"). */
uint64_t kit_upstream_moved(const struct kit_engine *e);

/* Frees e's upstreams and their connections (after its app is freed). */
void kit_upstream_free(struct kit_engine *e);

/* The engine's methods (stack: engine, then the arguments):
 *   upstream(url) -> id: declares the upstream for url (the same id when it exists);
 *   upstream_answer(id, status, protocol|body, delay): 101 accepts with the subprotocol, another
 *     status refuses with body, delay seconds after the request;
 *   upstream_send(id, data, binary) -> true | nil, err: a message on the newest connection;
 *   upstream_close(id, code, reason) and drop (no close frame) -> true | nil, err;
 *   upstream_next(id) -> {kind =, data =} | {kind = "close", code =, reason =} | nothing;
 *   upstream_state(id) -> {connections =, open =, request = the last request's head}. */
int kit_upstream_add(lua_State *L, struct kit_engine *e);
int kit_upstream_answer(lua_State *L, struct kit_engine *e);
int kit_upstream_send(lua_State *L, struct kit_engine *e);
int kit_upstream_close(lua_State *L, struct kit_engine *e, bool drop);
int kit_upstream_next(lua_State *L, struct kit_engine *e);
int kit_upstream_state(lua_State *L, struct kit_engine *e);

#endif
