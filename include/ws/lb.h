/* The Lua application layer: one Lua 5.4 state per process running app.lua, implementing
 * struct ws_app_ops on top of it. Its files depend one way, each only on those before it:
 *   lb_fields HTTP fields as Lua values: query and cookie pairs, header lines
 *   lb_watchdog  the budget's watchdog: a count hook armed only in a run that overruns
 *   lb_gc     GC pacing
 *   lb_guard  the standard functions guarded for the budget and the tasks (xpcall, coroutine)
 *   lb_state  the VM (heap cap, handler time budget, lb_call)
 *   lb_task   handlers as coroutines on the loop: the pool, waiting, waking, cancelling
 *   lb_conn   the conn userdata
 *   lb_front  the Lua side of upgrade(req) and the app.http routes: requests in, answers out
 *   lb_http   ws.http: outbound HTTP requests that wait
 *   lb_wsclient_events  ws.connect's clients: the core's events queued for the app, reconnects
 *   lb_wsclient_opts  ws.connect's options read and checked
 *   lb_wsclient  ws.connect: outbound WebSocket connections (waiting or with callbacks)
 *   lb_pg_types  ws.pg's values: Lua parameters in, result rows out
 *   lb_pg_query  ws.pg's queries and transactions that wait, the pools' gauges
 *   lb_pg     ws.pg: PostgreSQL pools and clients
 *   lb_timer  ws.after and ws.every: timers tied to the app version that started them
 *   lb_ws     the `ws` module
 *   lb_validate  a new version's checks: its app table, config table and routes
 *   lb_status    the status file of the latest reload, for `wsserver --reload`
 *   lb_load   loading and reloading the app (built aside, load() hook, swapped in)
 *   lb_app    the event dispatch: struct ws_app_ops over the app's handlers
 *   lb_redis  ws.redis: pooled Redis clients whose calls wait, subscriptions
 * C calls Lua only through lb_call() (handlers) and lb_protect() (loading, validation,
 * reload): nothing a Lua value does can raise outside a protected call. */
#ifndef WS_LB_H
#define WS_LB_H

#include "ws/app.h"
#include "ws/buf.h"
#include "ws/config.h"
#include "ws/frame.h"

#include <ev.h>
#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

enum lb_handler {
    LB_UPGRADE,
    LB_OPEN,
    LB_MESSAGE,
    LB_CLOSE,
    LB_DRAIN,
    LB_SHUTDOWN,
    LB_LOAD,
    LB_ERROR,
    LB_HANDLER_COUNT
};

struct lb_timer;
struct lb_task;
struct ws_http_client;
struct ws_http_client_ops;
struct lb_wsclient;
struct lb_pg;
struct ws_pg_ops;
struct ws_pg_pool;
struct luaL_Reg;
struct ws_client_net;
struct lb_redis;
struct ws_redis_ops;
struct ws_redis_value;

struct lb_app {
    lua_State *L;
    struct ev_loop *loop;
    struct ws_server *srv;   /* NULL until lb_app_attach */
    struct ws_config base;   /* defaults + command line: every load starts from it */
    struct ws_config config; /* base + the current version's config table */
    char *path;              /* app.lua */
    char *dir;               /* its folder */
    size_t mem, mem_limit;
    unsigned gc_cycles, gc_paced; /* GC cycles ended, and the count the pause was set at */
    size_t gc_live;               /* the heap as the last cycle ended (~ its live part) */
    bool gc_app_tuned;            /* the app set the collector's mode or parameters */
    double handler_timeout;
    double deadline; /* monotonic seconds; the running handler's budget ends here */
    int depth;       /* lb_call and lb_protect nesting */
    int base_depth;  /* the depth at which an lb_call starts a fresh budget (inside lb_protect) */
    bool timed_out;
    char last_error[1024]; /* the latest handler error, with its traceback */
    int app_ref;           /* the app table */
    int handlers[LB_HANDLER_COUNT];
    int http_ref;          /* app.http routes table or LUA_NOREF */
    int conns_ref;         /* id -> conn userdata */
    const void *conn_mt;   /* the conn metatable, compared by address */
    int kind_refs[2];      /* the strings "text" and "binary", made once (message's kind) */
    const char *kinds[2];  /* their bytes (short strings are interned: same address, same string) */
    const char *send_name; /* the bytes of the interned "send", the key of conn:send */
    int ws_ref;            /* the real ws table */
    int state_ref;         /* ws.state */
    uint64_t generation;
    bool loading;      /* a new version's chunk or load() is running */
    int in_load;       /* load() is running (also at start and for --check) */
    bool config_error; /* the last failed load was refused for its config table */
    bool reload_pending;
    ev_idle reload_idle;     /* runs a requested reload between two loop iterations */
    struct lb_timer *timers; /* active ws.after/ws.every timers */
    uint64_t attempts;       /* loads tried, the first included */
    long status_pid;   /* whose status file reload results go to (0: this process; < 0: none) */
    bool closing;      /* lb_app_free is closing the state: no new timers */
    char warning[512]; /* a Lua warning being assembled from its pieces */
    size_t warning_len;
    lua_State *hooked;       /* the thread whose budget hook fires at every instruction */
    struct lb_task *current; /* the task running now, or NULL */
    struct lb_task *idle;    /* finished tasks, their coroutines ready for reuse */
    size_t nidle;
    struct lb_task *waiting; /* tasks waiting (SPEC §4a) */
    size_t nwaiting;
    const char *stopping;        /* set by lb_task_cancel_all: every wait returns nil, stopping */
    struct ws_http_client *http; /* ws.http's client, made on first use */
    const struct ws_http_client_ops *http_ops; /* its calls: libcurl's, or a stand-in's */
    struct lb_wsclient *wsclients;             /* ws.connect's clients that are not collected yet */
    const struct ws_client_net *wsclient_net;  /* where they connect: NULL (the network), or a
                                                  stand-in's */
    struct lb_pg *pg;                          /* ws.pg's pools, made on first use */
    const struct ws_pg_ops *pg_ops;            /* their calls: libpq's (NULL), or a stand-in's */
    struct lb_redis *redis; /* ws.redis's pools and subscriptions, made on first use */
    const struct ws_redis_ops *redis_ops; /* their calls: hiredis's (NULL), or a stand-in's */
};

/* The app whose state L is. */
static inline struct lb_app *lb_app_of(lua_State *L)
{
    return *(struct lb_app **)lua_getextraspace(L);
}

/* ---- lb_fields ---- */

/* Pushes the key=value pairs of s[0..n) split on sep as a table, values form-decoded when
 * decode ('+' and %XX; the first of repeated keys wins). [-0, +1, m] */
void lb_push_pairs(lua_State *L, const char *s, size_t n, char sep, bool decode);

/* With a header name at -2 and its value at -1 (a lua_next pair of an opts.headers table),
 * pushes and returns "Name: value", or raises naming api: the name must be a token, the value a
 * string or number without CR, LF or NUL (RFC 9110 §5.5). [-0, +1, v] */
const char *lb_push_header_line(lua_State *L, const char *api);

/* ---- lb_watchdog ---- */

/* Stops this process's budget watchdog (its CPU timer and SIGPROF handler), for when no app is
 * left and the code of its handler may go away (the testing kit's module is unloaded); the next
 * state started (lb_state_open) starts it again. */
void lb_budget_stop(void);

/* The rest of this section, and the lb_gc and lb_guard sections, are internal to the VM:
 * lb_state and its pieces below it. */

/* Monotonic seconds: the budget's clock (real time, never the loop's clock). */
static inline double lb_mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The watchdog's state, process-wide (one loop thread per process): lb_state's run bookkeeping
 * and lb_run_on/off say which run is on and on which thread; the SIGPROF tick reads it. */
struct lb_watchdog {
    lua_State *volatile running;  /* the thread of the run in progress, or NULL between runs */
    volatile unsigned long seq;   /* bumped when a run starts */
    volatile unsigned long seen;  /* seq at the latest tick */
    volatile unsigned long armed; /* seq of the run a hook was armed in */
    pid_t pid;                    /* the process whose timer ticks */
    timer_t timer;
};
extern struct lb_watchdog lb_watchdog;

/* Starts this process's watchdog timer and its SIGPROF handler (once per process: a forked
 * worker starts its own). Returns 0, or -1 with errno. */
int lb_watchdog_start(void);

/* Makes co the running thread of a nested run (a coroutine resumed, a call inside lb_protect);
 * returns the one before. A hook armed in this run goes with it. */
lua_State *lb_run_on(lua_State *co);

/* Back to prev after co ran (NULL: the run is over); an armed hook goes back with it. */
void lb_run_off(lua_State *co, lua_State *prev);

/* The count hook the watchdog arms. SPEC §4: a handler running longer than handler_timeout is
 * interrupted and treated as an error: past the deadline it raises, and from then on at every
 * instruction, so a pcall loop cannot swallow it. A hook armed in a run that is over removes
 * itself. [-0, +0, v] */
void lb_budget_hook(lua_State *L, lua_Debug *ar);

/* ---- lb_gc ---- */

/* Sets up GC pacing on a new state: the sentinel whose __gc counts the collector's cycles, and
 * collectgarbage wrapped (an app that tunes the collector itself keeps its settings).
 * [-0, +0, m] */
void lb_gc_open(lua_State *L);

/* After a handler in which a cycle ended: sets the collector's pause from the heap that cycle
 * left (a small heap waits for some growth first), unless the app tuned the collector itself. */
void lb_gc_pace(struct lb_app *a);

/* ---- lb_guard ---- */

/* Replaces xpcall (its message handler guarded), coroutine.yield, isyieldable, resume and wrap
 * (a handler's own coroutine is the main thread to the app; the watchdog follows the coroutine
 * that runs) and debug.sethook (refused) in a new state's standard library. [-0, +0, m] */
void lb_guard_open(lua_State *L);

/* ---- lb_state ---- */

/* Creates a->L: the capped allocator, a panic handler that logs (an error outside any protected
 * call would be our bug), Lua warnings to the log, the standard libraries, the budget's
 * watchdog (a SIGPROF timer on the calling thread's CPU clock, once per process; it arms a count
 * hook only in a run that overruns), a guarded xpcall and coroutine.resume/wrap, package.path
 * with the app's folder and the shipped library. Returns 0, or WS_E_NOMEM with err filled.
 * [-0, +0, -] */
int lb_state_open(struct lb_app *a, char *err, size_t errlen);

/* Calls the function below nargs arguments on the stack with a traceback handler and the
 * handler time budget. [-(nargs+1), +nres on success / +0 on error, -]
 * Returns 0, or -1 after logging the error (what names the callback; conn, when not 0, the
 * connection it ran for; the message and traceback as one multi-line field), keeping it in
 * a->last_error and counting it. */
int lb_call_for(struct lb_app *a, int nargs, int nres, const char *what, uint64_t conn);

/* The text of the error object at idx without running any metamethod or converting it.
 * [-0, +0, -] */
const char *lb_error_text(lua_State *L, int idx);

/* Logs a handler's error (handler what, connection conn when not 0, msg with its traceback),
 * keeps it in a->last_error and counts it. */
void lb_report_error(struct lb_app *a, const char *what, uint64_t conn, const char *msg);

/* A handler run's budget, between lb_budget_begin and lb_budget_end. */
struct lb_run {
    double started;  /* monotonic seconds, 0 when nested */
    lua_State *prev; /* the thread that ran before (nested) */
};

/* Opens a handler run's time budget (SPEC §4: handler_timeout per run between two waits) for
 * the run of thread co: a fresh one at the outermost level, the enclosing one when nested. The
 * budget's watchdog interrupts co (or a coroutine it resumes) once the budget is spent. */
void lb_budget_begin(struct lb_app *a, lua_State *co, struct lb_run *run);

/* Closes the budget lb_budget_begin opened for co and records the run's latency. */
void lb_budget_end(struct lb_app *a, lua_State *co, const struct lb_run *run);

/* lb_budget_end then lb_budget_begin (at the outermost level with one clock read for both): the
 * run on co goes on with another handler call (the next message of the same read), a run with a
 * budget of its own. */
void lb_budget_next(struct lb_app *a, lua_State *co, struct lb_run *run);

/* lb_call_for without a connection. */
int lb_call(struct lb_app *a, int nargs, int nres, const char *what);

/* Runs fn(L) in protected mode with ud as its only (light userdata) argument, under the handler
 * time budget; an lb_call inside fn gets a budget of its own. For the C code that works on the
 * Lua state outside a handler (loading, validation, reload): any error it or a metamethod raises
 * comes back here instead of aborting the process. Returns 0, or -1 with the error's text in err
 * (the error is not logged). [-0, +0, -] */
int lb_protect(struct lb_app *a, lua_CFunction fn, void *ud, char *err, size_t errlen);

/* Pushes the registry value ref. [-0, +1, -] */
void lb_push_ref(lua_State *L, int ref);

/* Where the shipped Lua library (ws.json, ws.testing, ...) may be, in package.path form, each
 * entry ending in ';': $WSSERVER_LUA_PATH, then beside the binary (build tree, source tree,
 * installed prefix), then WS_LUA_DIR. */
#define LB_LIB_PATH_MAX 16384
void lb_lib_path(char *out, size_t cap);

/* Asks for a reload between two loop iterations (safe from inside a handler): starts the idle
 * watcher lb_app_new set up. */
void lb_app_request_reload(struct lb_app *a);

/* ---- lb_task ---- */

/* How a task's run ended. */
enum lb_task_result {
    LB_TASK_DONE,    /* the handler returned */
    LB_TASK_FAILED,  /* it raised: logged and counted (lb_report_error) */
    LB_TASK_WAITING, /* it waits: set done/ud to hear of its end */
};

/* Called when a task that waited ends (failed: it raised). */
typedef void (*lb_task_done_fn)(struct lb_app *a, void *ud, bool failed);
/* Stops what a wait started (an HTTP request) when the wait ends early. */
typedef void (*lb_task_cancel_fn)(struct lb_task *t);

/* One handler run as a coroutine (SPEC §4a). Coroutines come from a pool: one that finished
 * without waiting is reused at once. */
struct lb_task {
    ev_timer timer; /* the wait's timeout; also wakes a cancelled wait on the next iteration */
    lua_State *co;
    int ref; /* keeps co alive */
    struct lb_app *a;
    const char *what;     /* the handler, for logs and errors */
    uint64_t conn;        /* the connection it runs for, or 0 */
    const char *no_wait;  /* set: the handler cannot wait; waiting calls raise */
    const char *gone;     /* set: waits return nil, gone at once ("closed", "shutdown") */
    lb_task_done_fn done; /* a task that waited: told of its end */
    void *ud;
    bool waiting;             /* yielded by a waiting call */
    bool broken;              /* its coroutine ended in an error: not reused */
    bool sleeping;            /* the timer ending is the wait's success (ws.sleep) */
    const char *woke;         /* why the wait ended early: "timeout", "closed", ...; NULL: done */
    lb_task_cancel_fn cancel; /* stops the wait's own work, or NULL */
    void *wait_ud;            /* the wait's own state */
    double wait_started;      /* ev_now when the wait began */
    uint64_t generation;      /* the app version whose message handler is at LB_TASK_MESSAGE */
    struct lb_run run;        /* the budget of its run now (resumed, or lb_budget_next) */
    struct lb_task *prev, *next; /* a->waiting, or a->idle */
};

/* A pooled coroutine keeps four values at the bottom of its stack, under every call it runs, so
 * the message path pushes them without a registry lookup: the connections table, the message
 * kinds "text" and "binary", and the app's message handler (or nil) of the generation in
 * t->generation. Its stack is "empty" at LB_TASK_BASE. */
enum {
    LB_TASK_CONNS = 1,
    LB_TASK_TEXT,
    LB_TASK_BINARY,
    LB_TASK_MESSAGE,
    LB_TASK_BASE = LB_TASK_MESSAGE
};

/* A task from the pool with its coroutine empty; NULL when the heap is full. */
struct lb_task *lb_task_new(struct lb_app *a);

/* Runs the function below nargs arguments on t->co under the handler budget (what names it,
 * conn the connection it runs for, or 0). DONE and FAILED give t back to the pool; WAITING
 * leaves it running: set t->done and t->ud. */
enum lb_task_result lb_task_start(struct lb_task *t, int nargs, const char *what, uint64_t conn);

/* The task a waiting call (api names it) runs in. Raises for misuse: outside a handler, inside
 * load, in a handler that cannot wait, inside a coroutine of the app's own, or where Lua cannot
 * yield (a metamethod, a C function such as table.sort). [-0, +0, v] */
struct lb_task *lb_task_waiter(lua_State *L, const char *api);

/* Yields t (L is t->co) until lb_task_wake, or timeout seconds (sleeping: the timer ending is
 * the success, else it wakes the task with "timeout"). On resumption k runs with t as its
 * context; t->woke says why the wait ended. cancel/wait_ud: the wait's own work. [-?, +?, -] */
int lb_task_wait(lua_State *L, struct lb_task *t, double timeout, bool sleeping,
                 lb_task_cancel_fn cancel, void *wait_ud, lua_KFunction k);

/* Ends t's wait now and resumes it (why: NULL for success, else the reason its waiting call
 * reports). Calls t->cancel first when why is set. For watcher callbacks. */
void lb_task_wake(struct lb_task *t, const char *why);

/* The one cancel path (close, shutdown): ends t's wait with nil, why on the next loop
 * iteration; later waits of t return nil, why at once. */
void lb_task_cancel(struct lb_task *t, const char *why);

/* Cancels every waiting task with why; waits that begin later return nil, why at once. */
void lb_task_cancel_all(struct lb_app *a, const char *why);

/* Frees the tasks (waiting ones never resume) before the state closes. */
void lb_task_free_all(struct lb_app *a);

/* A reload committed: the pool's coroutines hold the old version's message handler, so they go
 * (the old version can be collected); new ones are made as needed. */
void lb_task_drop_idle(struct lb_app *a);

/* ---- lb_conn ---- */

/* Registers the conn metatable. [-0, +0, m] */
void lb_conn_open(lua_State *L);

/* Pushes the userdata for c onto L, creating it on first use. [-0, +1, m] */
void lb_conn_push(lua_State *L, struct ws_conn *c);

/* Pushes c's userdata onto L when it exists already and returns true; pushes nothing and
 * returns false otherwise. Never allocates. co_task: L is a pooled task's coroutine, whose
 * stack holds the connections table (LB_TASK_CONNS). [-0, +0|+1, -] */
bool lb_conn_push_existing(lua_State *L, struct ws_conn *c, bool co_task);

/* The connection is going away: the userdata becomes a stale handle. [-0, +0, -] */
void lb_conn_release(struct lb_app *a, struct ws_conn *c);

/* The open-or-closed connection behind argument idx, or NULL for a stale handle; raises when
 * idx is not a conn. [-0, +0, v] */
struct ws_conn *lb_conn_check(lua_State *L, int idx);

/* A message kind argument: "text" (the default when absent or nil) or "binary", as the opcode;
 * raises on anything else. [-0, +0, v] */
uint8_t lb_check_kind(lua_State *L, int idx);

/* Raises unless a text message is valid UTF-8 (RFC 6455 §5.6); hint says how to send binary
 * instead. [-0, +0, v] */
void lb_check_text(lua_State *L, uint8_t opcode, const char *data, size_t len, const char *hint);

/* ---- lb_front ---- */

/* This section is internal to the event dispatch: lb_front and lb_app, which runs its handlers. */

/* One event for a handler's task. Building a handler's arguments and reading its results
 * allocate Lua memory and may run metamethods, so they run inside the task too: at the heap cap
 * (SPEC §4) an allocation failure fails that call instead of aborting the process from an
 * unprotected context. The event lives on the caller's stack: a task reads it only before its
 * first wait. */
struct lb_event {
    struct lb_app *a;
    struct ws_conn *c;
    const struct ws_http_request *req;
    const uint8_t *data;
    size_t len;
    int code;
    bool binary;
    const char *text;                 /* close reason, shutdown reason, failed handler's name */
    struct ws_upgrade_reply *upgrade; /* upgrade: the decision */
    struct ws_http_reply *http;       /* http: the answer */
    struct ws_buf headers;            /* http: extra header lines being built */
    bool routed;                      /* http: a route matched */
};

/* Where an upgrade or http handler that waited builds its answer (SPEC §4a: the 101, the
 * refusal or the route's response goes out when it returns). */
struct lb_decision {
    bool is_http;
    struct ws_upgrade_reply upgrade;
    struct ws_http_reply http;
    struct ws_buf headers; /* http: extra header lines being built */
};

struct lb_pending; /* an event queued behind a waiting handler (lb_app) */

/* A connection's handlers in order: the task waiting for it and what came meanwhile. Made when
 * one of its handlers first waits (c->app_state), freed with the connection. */
struct lb_connq {
    struct lb_app *a;
    struct ws_conn *c;    /* NULL once the connection is freed */
    struct lb_task *task; /* the handler waiting, or NULL */
    const char *what;     /* its name */
    struct lb_pending *head, *tail;
    size_t bytes;                 /* message bytes queued */
    struct lb_decision *decision; /* an upgrade or http handler waiting, or NULL */
};

/* upgrade(req) as a task's function, its struct lb_event the only (light userdata) argument:
 * pushes the request as a table, calls the app's upgrade handler and reads its decision into
 * e->upgrade, or, once it has waited, into its connection's decision (the task's ud is that
 * connection's struct lb_connq). [-0, +0, e] */
int lb_front_call_upgrade(lua_State *L);

/* The app.http route matching e->req, the same way: e->routed tells whether one matched; its
 * answer goes into e->http and e->headers, or, once it has waited, into its connection's
 * decision. A status, body or headers of the wrong type raise (the route's error). [-0, +0, e] */
int lb_front_call_http(lua_State *L);

/* Empties an upgrade reply (frees what it owns) and makes it a 500 refusal. */
void lb_front_fail_upgrade(struct ws_upgrade_reply *reply);

/* Empties a route's reply and its header lines being built, and makes it a 500 answer. */
void lb_front_fail_http(struct ws_http_reply *reply, struct ws_buf *headers);

/* Frees the answer of a waiting handler that will never go out (its connection is freed); NULL
 * is a no-op. */
void lb_decision_free(struct lb_decision *d);

/* ---- lb_http ---- */

/* Pushes the ws.http table (request, get, post) and registers its metatables. [-0, +1, m] */
void lb_http_open(lua_State *L);

/* ---- lb_wsclient ---- */

/* Registers the client metatable and pushes the ws.connect function. [-0, +1, m] */
void lb_wsclient_open(lua_State *L);

/* ---- lb_wsclient_events ---- */

/* A reload (keep_generation: the version now running): clients with callbacks that an older
 * version started close with 1001 and do not reconnect. keep_generation 0 (the state closes):
 * every connection is dropped at once. */
void lb_wsclient_cancel(struct lb_app *a, uint64_t keep_generation);

/* A shutdown: every client closes with 1001 and none reconnects. */
void lb_wsclient_shutdown(struct lb_app *a);

/* The rest of this section and the next are shared by lb_wsclient.c, lb_wsclient_events.c and
 * lb_wsclient_opts.c only: the userdata ws.connect returns, and the calls between its files. */

#define LB_WSCLIENT_MAX_PROTOCOLS 16
#define LB_WSCLIENT_MAX_HEADERS 64

enum { LB_WSCLIENT_FN_OPEN, LB_WSCLIENT_FN_MESSAGE, LB_WSCLIENT_FN_CLOSE, LB_WSCLIENT_FN_COUNT };

struct lb_wsclient_item; /* one queued event (lb_wsclient_events.c) */

/* The userdata ws.connect returns (the metatable "wsserver.wsclient"). */
struct lb_wsclient {
    struct lb_app *a;
    struct ws_client *c; /* the connection now, or NULL */
    int self_ref;        /* event style: anchors the userdata while it may still call back */
    int fn_ref[LB_WSCLIENT_FN_COUNT];
    bool event;              /* callbacks instead of cl:receive */
    bool reconnect;          /* event style: connect again after an end */
    bool app_closed;         /* cl:close, a reload or a shutdown: no reconnect */
    bool opened;             /* the current connection completed its handshake */
    bool pumping;            /* pump() is on the C stack */
    struct lb_task *waiter;  /* a task waiting in ws.connect or cl:receive */
    struct lb_task *running; /* event style: a callback that waits; later events queue */
    struct lb_wsclient_item *head, *tail;
    size_t queued; /* bytes of queued messages */
    /* how the last connection ended */
    int code;
    char reason[WS_FRAME_MAX_CONTROL_PAYLOAD + 1];
    size_t reason_len;
    char err[400];
    int status;
    char *body;
    size_t body_len;
    char protocol[128];
    /* the options, kept for reconnecting */
    char *url;
    char *protocols[LB_WSCLIENT_MAX_PROTOCOLS];
    size_t nprotocols;
    char *headers[LB_WSCLIENT_MAX_HEADERS];
    size_t nheaders;
    char *ca_file;
    bool insecure, compression;
    double timeout;
    size_t max_message_bytes;
    double delay, min_delay, max_delay; /* reconnect back-off */
    uint64_t rng;                       /* its jitter */
    ev_timer retry;
    uint64_t generation;
    struct lb_wsclient *prev, *next; /* the app's clients */
};

/* Takes the oldest queued event off cl's queue (the caller frees it with free()), resuming the
 * socket's reads once the queue is down to half its cap; NULL when the queue is empty. */
struct lb_wsclient_item *lb_wsclient_pop_item(struct lb_wsclient *cl);

/* Pushes the next queued message (data, kind), dropping the open and close events before it,
 * or the end (nil, "closed", code, reason), or nothing when neither is there. Returns how many
 * values it pushed. [-0, +0|+2|+4, m] */
int lb_wsclient_deliver(lua_State *L, struct lb_wsclient *cl);

/* Lets the userdata go (unrefs its anchor) once nothing can call back any more: no connection,
 * no retry timer, no queued event, no callback running. Last thing its callers do: the collector
 * may free cl at the next allocation. */
void lb_wsclient_maybe_release(struct lb_wsclient *cl);

/* Connects with the kept options (cl->c). Returns false with cl->err filled. */
bool lb_wsclient_start(struct lb_wsclient *cl);

/* cl->retry's callback (w->data is cl): the event style's (re)connect, from the loop; a failure
 * to start is reported like any failed attempt (the close callback, then a retry if asked). */
void lb_wsclient_on_retry(struct ev_loop *loop, ev_timer *w, int revents);

/* Ends cl for good: no reconnect; an open connection starts its closing handshake with code
 * and reason, one still connecting that nobody waits for is dropped (1006). */
void lb_wsclient_shut(struct lb_wsclient *cl, int code, const char *reason, size_t len);

/* ---- lb_wsclient_opts ---- */

/* Reads a timeout in seconds at idx (nil or none: the app's io_timeout); raises naming what
 * unless it is a finite number > 0. [-0, +0, v] */
double lb_wsclient_opt_timeout(lua_State *L, int idx, const char *what);

/* Reads ws.connect's opts (at stack index 2; nil for none) into cl over the app's defaults:
 * timeouts, sizes, TLS, compression, reconnect delays, subprotocols, headers (copied) and the
 * callbacks (registry references; any makes cl event style). Raises for misuse. [-0, +0, v] */
void lb_wsclient_read_opts(lua_State *L, struct lb_wsclient *cl);

/* ---- lb_pg ---- */

/* Pushes the ws.pg table (connect) and registers its metatables. [-0, +1, m] */
void lb_pg_open(lua_State *L);

/* Closes ws.pg's pools; after the state is closed (nothing refers to a connection any more). */
void lb_pg_free(struct lb_app *a);

/* ---- lb_pg_types ---- */

struct pg_result; /* libpq's PGresult */

/* Turns the n parameters from idx on into strings in place (nil and ws.null stay nil, for SQL
 * NULL) and fills values, lengths and formats as PQsendQueryParams reads them: booleans, numbers
 * as decimal text, tables as their JSON, strings as they are (binary format when not valid
 * UTF-8 or holding a NUL, as bytea wants them). Raises for values SQL has no form for.
 * [-0, +0, e] */
void lb_pg_params(lua_State *L, struct lb_app *a, int idx, int n, const char **values, int *lengths,
                  int *formats);

/* Pushes the rows of res (tables keyed by column name, values by column type, NULL as ws.null)
 * and the affected row count; returns 2. [-0, +2, e] */
int lb_pg_push_rows(lua_State *L, struct lb_app *a, struct pg_result *res);

/* ---- lb_pg_query ---- */

/* This section is shared by lb_pg.c and lb_pg_query.c only: the app's pools (made by lb_pg.c,
 * their gauges kept by lb_pg_query.c), and the calls lb_pg.c's clients make. */

#define LB_PG_MAX_POOLS 16

/* One pool of the app and the conninfo that made it. */
struct lb_pg_slot {
    char *conninfo;
    struct ws_pg_pool *pool;
};

/* The app's pools, one per conninfo, alive until the app is freed: a reload keeps them (its
 * connect finds the same pool), so no client outlives its connections. */
struct lb_pg {
    struct lb_pg_slot pools[LB_PG_MAX_POOLS];
    size_t n;
};

/* The calls of a's pools: libpq's, or the stand-in's in a->pg_ops. */
const struct ws_pg_ops *lb_pg_ops(const struct lb_app *a);

/* Sets the pool gauges of /metrics: connections open and handed out, all of a's pools together
 * (nothing without a server or a pool). */
void lb_pg_gauges(struct lb_app *a);

/* client:query(sql, ...) on pool, the client (argument 1) checked by the caller: sends the
 * statement with its parameters and waits up to timeout seconds in all for a connection and the
 * answer. Returns rows, count or nil, err [, sqlstate]; raises for misuse (a NUL in the SQL, too
 * many parameters, a value SQL has no form for, a handler that cannot wait). [-0, +2|+3, e] */
int lb_pg_query(lua_State *L, struct ws_pg_pool *pool, double timeout);

/* client:transaction(fn) on pool, the client (argument 1) checked by the caller: fn(tx) runs
 * between BEGIN and COMMIT on one connection; it rolls back when fn raises (the error goes on),
 * returns nil (or false) and an error, or a query of it was abandoned. Returns fn's results
 * (true when none) or nil, err; waits, timeout seconds for each statement. [-0, +?, e] */
int lb_pg_transaction(lua_State *L, struct ws_pg_pool *pool, double timeout);

/* Pushes nil, why [, sqlstate] and returns how many. [-0, +2|+3, m] */
int lb_pg_push_failure(lua_State *L, const char *why, const char *sqlstate);

/* Pushes a new locked metatable called name: methods (or NULL) as its __index, gc (or NULL) as
 * its __gc. [-0, +1, m] */
void lb_pg_metatable(lua_State *L, const char *name, const struct luaL_Reg *methods,
                     lua_CFunction gc);

/* Registers the metatables of transactions and of statements' waits. [-0, +0, m] */
void lb_pg_query_open(lua_State *L);

/* ---- lb_redis ---- */

/* Pushes the ws.redis table (connect, url) and registers its metatables. [-0, +1, m] */
void lb_redis_open(lua_State *L);

/* Ends the subscriptions made by generations other than keep_generation (all when 0), like the
 * timers of an older version. [-0, +0, -] */
void lb_redis_cancel_subs(struct lb_app *a, uint64_t keep_generation);

/* Closes every pool (after the state: no call refers to one any more); requests still in flight
 * are dropped without a callback. */
void lb_redis_free(struct lb_app *a);

/* Pushes a Redis reply as ws.redis gives it: strings for bulk and status replies, integers, the
 * value at stack index null for nil, arrays as sequences, an error as {false, message}.
 * [-0, +1, m] */
void lb_redis_push_reply(lua_State *L, const struct ws_redis_value *v, int null);

/* ---- lb_timer ---- */

/* Registers the timer metatable and sets after and every (ws.after, ws.every) in the table at
 * the top. [-0, +0, m] */
void lb_timer_open(lua_State *L);

/* Cancels the timers of generations other than generation (all when generation is 0), and with
 * them those generations' ws.connect callbacks and Redis subscriptions. */
void lb_ws_cancel_timers(struct lb_app *a, uint64_t generation);

/* ---- lb_ws ---- */

/* Creates the ws module, sets the global and package.loaded.ws. [-0, +0, m] */
void lb_ws_open(struct lb_app *a);

/* ---- lb_validate ---- */

/* The app table fields that hold handlers, by enum lb_handler. */
extern const char *const lb_handler_names[LB_HANDLER_COUNT];

/* Checks the returned app table: every known field has the right type, unknown ones are
 * refused (a typo like "mesage" would otherwise be silently ignored). Returns 0, or WS_E_INVAL
 * with err filled. [-0, +0, m] */
int lb_validate_app(lua_State *L, int idx, char *err, size_t errlen);

/* Merges the config table at t into cfg. Every value must have its option's type: a string
 * where a number belongs ("20" for ping_interval) is refused, like a number for a string.
 * Returns 0, or a negative WS_E_* with err filled (cfg then holds what was merged before).
 * [-0, +0, e] (a __len or __tostring metamethod may raise) */
int lb_validate_config(lua_State *L, int t, struct ws_config *cfg, char *err, size_t errlen);

/* Checks the keys of the app.http table at idx (its own keys: a metamethod that dispatches
 * cannot be listed): each is "METHOD /path" (an upper-case method, one space, a path starting
 * with '/' without spaces or a query) holding a function, and none is a built-in path.
 * Returns 0, or WS_E_INVAL with err filled. [-0, +0, -] */
int lb_validate_routes(lua_State *L, int idx, char *err, size_t errlen);

/* ---- lb_status ---- */

/* The places the result of the latest reload of process pid may be written ("wsserver --reload"
 * reads it): candidate which (0, 1, ...) is wsserver-<pid>.status in, in order, the pidfile's
 * folder (when pidfile is not NULL), $RUNTIME_DIRECTORY (systemd's RuntimeDirectory=), /tmp.
 * Returns 0, or WS_E_INVAL when there is no candidate which (or it does not fit in cap). The
 * server writes to the first folder that lets it and to /tmp too; the reader looks in each. */
int lb_status_path(char *out, size_t cap, const char *pidfile, long pid, int which);

/* Publishes the latest reload result of a (ok, or the reason why) for "wsserver --reload" in the
 * first folder of lb_status_path that lets us write (the pidfile's or the runtime folder: a
 * private /tmp, as systemd's PrivateTmp= gives, is invisible to a --reload run from outside),
 * and in /tmp too, where `--reload PID` without the pidfile looks. Nothing when a->status_pid
 * is negative; a result that is ok while the TLS files failed to reload is written as failed.
 * Failures to write are ignored. */
void lb_status_write(struct lb_app *a, bool ok, const char *why);

/* ---- lb_load ---- */

/* Creates the Lua state, loads and runs the app at path and merges its config table over cli
 * (command-line options win) into a->config. Returns NULL when the app cannot load (the reason,
 * naming the file, line or option, is logged; *config_error tells whether its config table was
 * the problem). */
struct lb_app *lb_app_new(struct ev_loop *loop, const char *path, const struct ws_config *cli,
                          bool *config_error, char *err, size_t errlen);

/* When set, lb_app_new calls it on each new app before its code first runs, so that a process
 * embedding apps (the testing kit, src/kit) can put stand-ins in the ops pointers above (a
 * connect at load time already uses them). NULL in the server. */
extern void (*lb_app_standins)(struct lb_app *a);

/* Connects the app to the running server and calls its load(state, info) hook. Returns 0, or
 * WS_E_INVAL when load failed (err filled). */
int lb_app_attach(struct lb_app *a, struct ws_server *srv, char *err, size_t errlen);

/* --check: calls the app's load(state, info) (info.trigger "check") without a server, as a
 * start would. Returns 0, or WS_E_INVAL when load failed (err filled, the error logged). */
int lb_app_check(struct lb_app *a, char *err, size_t errlen);

/* Reloads the app from its file (SIGHUP, --watch, ws.reload). The new version is built aside
 * under protection: any failure, an error a metamethod raises included, keeps the running
 * version and is logged with its reason. Returns 0 or WS_E_INVAL. */
int lb_app_reload(struct lb_app *a, const char *trigger);

/* Closes the Lua state; NULL is a no-op. */
void lb_app_free(struct lb_app *a);

/* ---- lb_app ---- */

/* The ops table the server calls. */
extern const struct ws_app_ops lb_app_ops;

#endif
