/* An engine's life: made from an app (the server and its Lua state on a new loop with a simulated
 * clock, the stand-ins installed, the app's file, listener and log in a temporary folder), run
 * until it settles, freed. What a spec does with a running engine is kitcore.c's. */
#include "ws/kit.h"

#include "ws/clock.h"
#include "ws/config.h"
#include "ws/err.h"
#include "ws/lb.h"
#include "ws/log.h"
#include "ws/mempipe.h"
#include "ws/server.h"

#include <lauxlib.h>
#include <lua.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <limits.h>
#include <unistd.h>

#define SETTLE_ROUNDS 10000

static uint64_t moved(const struct kit_engine *e)
{
    uint64_t n = 0;
    for (size_t i = 0; i < e->nclients; i++)
        n += ws_mempipe_moved(e->clients[i].pipe);
    return n + kit_upstream_moved(e);
}

/* An app given as source is loaded, and reloaded, from its own folder under its bare name, so
 * that error positions and info.file say "app.lua" as for a file beside the server. Returns
 * the descriptor of the folder to go back to, or -1. */
int kit_in_app_dir(const struct kit_engine *e)
{
    if (!e->name[0])
        return -1;
    int cwd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (cwd >= 0 && chdir(e->dir) != 0) {
        close(cwd);
        return -1;
    }
    return cwd;
}

void kit_back_from_app_dir(int cwd)
{
    if (cwd < 0)
        return;
    (void)!fchdir(cwd);
    close(cwd);
}

/* Runs the loop without waiting until a round moves no byte and fires no timer due now: what
 * the last input set off has all happened. */
void kit_settle(struct kit_engine *e)
{
    int cwd = kit_in_app_dir(e); /* a reload it runs finds the app where it was loaded */
    e->spec_dir = cwd;
    int quiet = 0;
    for (int i = 0; i < SETTLE_ROUNDS && quiet < 2; i++) {
        uint64_t before = moved(e);
        kit_upstream_pump(e);
        ev_run(e->loop, EVRUN_NOWAIT);
        size_t fired = ws_clock_advance(e->loop, 0);
        quiet = fired == 0 && moved(e) == before ? quiet + 1 : 0;
    }
    e->spec_dir = -1;
    kit_back_from_app_dir(cwd);
}

static struct kit_engine *engines; /* engines with a loop; the budget watchdog runs while any */
static struct kit_engine *loading; /* the engine whose app lb_app_new is making */

struct kit_engine *kit_engine_of(struct ev_loop *loop)
{
    struct kit_engine *e = engines;
    while (e && e->loop != loop)
        e = e->next;
    return e;
}

/* lb_app_standins: every outside service of the app being made answers from the spec, from
 * before its code first runs (what its chunk and load() make reaches the stand-ins too). */
void kit_install_standins(struct lb_app *a)
{
    if (!loading)
        return;
    kit_http_install(loading, a);
    kit_pg_install(a);
    kit_redis_install(a);
    kit_upstream_install(loading, a);
    a->status_pid = -1; /* nobody runs wsserver --reload against a spec */
}

void kit_free_engine(struct kit_engine *e)
{
    if (!e->loop)
        return;
    ws_server_free(e->srv);
    lb_app_free(e->app);
    kit_http_answer_with(e, NULL);
    kit_pg_answer_with(e, NULL);
    kit_redis_detach(e);
    kit_upstream_free(e);
    for (size_t i = 0; i < e->nclients; i++)
        ws_mempipe_release(e->clients[i].pipe);
    free(e->clients);
    ws_clock_unsimulate(e->loop);
    ev_loop_destroy(e->loop);
    e->loop = NULL;
    struct kit_engine **at = &engines;
    while (*at != e)
        at = &(*at)->next;
    *at = e->next;
    if (!engines)
        lb_budget_stop(); /* before this module may be unloaded */
    char p[128];
    const char *const files[] = {e->name, "s", "log"};
    for (size_t i = 0; i < sizeof(files) / sizeof(*files); i++) {
        snprintf(p, sizeof(p), "%s/%s", e->dir, files[i]);
        unlink(p);
    }
    rmdir(e->dir);
}

static int set_option(struct ws_config *cfg, const char *name, const char *value, char *err,
                      size_t errlen)
{
    const struct ws_option *opt = ws_config_find(name, false);
    if (!opt) {
        snprintf(err, errlen, "unknown config key '%s'", name);
        return WS_E_INVAL;
    }
    return ws_config_set(cfg, opt, value, true, err, errlen);
}

/* The options of opts.config (values as text, as on the command line) over the defaults. */
static int read_config(lua_State *L, int opts, struct ws_config *cfg, char *err, size_t errlen)
{
    if (lua_getfield(L, opts, "config") != LUA_TTABLE) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        const char *name = lua_tostring(L, -2);
        const char *value = luaL_tolstring(L, -1, NULL);
        int rc = name ? set_option(cfg, name, value, err, errlen) : WS_E_INVAL;
        lua_pop(L, 2);
        if (rc < 0) {
            lua_pop(L, 2);
            return rc;
        }
    }
    lua_pop(L, 1);
    return 0;
}

/* WSSERVER_LUA_PATH from the spec's package.path, its relative entries made absolute (an app
 * given as source runs in its own folder). */
static void set_lib_path(lua_State *L, const char *path)
{
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        return;
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (const char *p = path; *p;) {
        const char *end = strchr(p, ';');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n && p[0] != '/') {
            luaL_addstring(&b, cwd);
            luaL_addchar(&b, '/');
        }
        luaL_addlstring(&b, p, n);
        luaL_addchar(&b, ';');
        p += n + (end ? 1 : 0);
    }
    luaL_pushresult(&b);
    setenv("WSSERVER_LUA_PATH", lua_tostring(L, -1), 0);
    lua_pop(L, 1);
}

/* kitcore.load(path_or_source [, {config = {name = value}, now = seconds, name = file}]) ->
 * engine, or nil, err, log when the server refuses the app (the log holds its reason). A readable
 * file's name is loaded from there; anything else is source, written to app.lua in the engine's
 * folder. */
int kit_load(lua_State *L)
{
    size_t n;
    const char *app = luaL_checklstring(L, 1, &n);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    struct kit_engine *e = lua_newuserdatauv(L, sizeof(*e), 1);
    memset(e, 0, sizeof(*e));
    e->spec_dir = -1;
    lua_newtable(L); /* the handles made for the app's objects, by address (weak) */
    lua_createtable(L, 0, 1);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_setiuservalue(L, -2, 1);
    e->http_fn = LUA_NOREF;
    e->pg_fn = LUA_NOREF;
    e->L = L;
    luaL_setmetatable(L, KIT_ENGINE_MT);
    int self = lua_gettop(L);
    /* the app's file, its log and the unix listener: in memory (tmpfs) when the machine has
     * one, as making and removing them on a disk file system costs more than the rest of a
     * load */
    snprintf(e->dir, sizeof(e->dir), "/dev/shm/wskit.XXXXXX");
    if (!mkdtemp(e->dir)) {
        snprintf(e->dir, sizeof(e->dir), "/tmp/wskit.XXXXXX");
        if (!mkdtemp(e->dir))
            return luaL_error(L, "cannot make a temporary folder");
    }
    e->loop = ev_loop_new(EVFLAG_AUTO);
    if (!e->loop)
        return luaL_error(L, "cannot make an event loop");
    e->next = engines;
    engines = e;
    /* the app finds the shipped library (ws.rooms, ...) where the spec does */
    if (!getenv("WSSERVER_LUA_PATH") && lua_getglobal(L, "package") == LUA_TTABLE &&
        lua_getfield(L, -1, "path") == LUA_TSTRING)
        set_lib_path(L, lua_tostring(L, -1));
    lua_settop(L, self);
    double now = 1e9;
    if (lua_istable(L, 2) && lua_getfield(L, 2, "now") != LUA_TNIL)
        now = luaL_checknumber(L, -1);
    ws_clock_simulate(e->loop, now);
    kit_redis_attach(e); /* before the app: kit_install_standins sends it there */

    char path[192], logpath[128], addr[128], err[1024] = "";
    const char *file = app;
    if (memchr(app, '\n', n) || strlen(app) != n || access(app, R_OK) != 0) { /* source */
        const char *name = "app.lua";
        if (lua_istable(L, 2) && lua_getfield(L, 2, "name") == LUA_TSTRING)
            name = lua_tostring(L, -1);
        luaL_argcheck(L, !strchr(name, '/') && strlen(name) < sizeof(e->name) && name[0] != '.', 2,
                      "name: a file name");
        snprintf(e->name, sizeof(e->name), "%s", name);
        snprintf(path, sizeof(path), "%s/%s", e->dir, e->name);
        FILE *f = fopen(path, "w");
        if (!f || fwrite(app, 1, n, f) != n || fclose(f) != 0)
            return luaL_error(L, "cannot write %s", path);
        file = e->name; /* loaded from its folder: positions and info.file name it alone */
    }
    snprintf(logpath, sizeof(logpath), "%s/log", e->dir);
    ws_log_setup(WS_LOG_DEBUG, WS_LOG_TEXT); /* ws.log.debug lines too */
    ws_log_set_flood_control(false);         /* t:errors and t:logs see every line */
    ws_log_open(logpath, err, sizeof(err));
    struct ws_config cli;
    ws_config_init(&cli);
    snprintf(addr, sizeof(addr), "unix:%s/s", e->dir);
    int rc = set_option(&cli, "listen", addr, err, sizeof(err));
    if (rc == 0 && lua_istable(L, 2))
        rc = read_config(L, 2, &cli, err, sizeof(err));
    bool config_error = false;
    int cwd = kit_in_app_dir(e);
    loading = e; /* the kit never reaches the network: kit_install_standins */
    if (rc == 0)
        e->app = lb_app_new(e->loop, file, &cli, &config_error, err, sizeof(err));
    loading = NULL;
    ws_config_free(&cli);
    if (e->app)
        e->srv = ws_server_new(e->loop, &e->app->config, &lb_app_ops, e->app, err, sizeof(err));
    if (e->srv) {
        /* signals are the process's, not a test's: many engines live side by side */
        ev_signal_stop(e->loop, &e->srv->sig_term);
        ev_signal_stop(e->loop, &e->srv->sig_int);
        ev_signal_stop(e->loop, &e->srv->sig_hup);
        if (lb_app_attach(e->app, e->srv, err, sizeof(err)) == 0) {
            kit_back_from_app_dir(cwd);
            kit_settle(e);
            lua_pushvalue(L, self);
            return 1;
        }
    }
    kit_back_from_app_dir(cwd);
    /* the reason is in the server's log (lb_app_new logs it and points there): its text too */
    lua_pushnil(L);
    lua_pushstring(L, err[0] ? err : "the app did not load");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    FILE *f = fopen(logpath, "r");
    char chunk[4096];
    size_t got;
    while (f && (got = fread(chunk, 1, sizeof(chunk), f)) > 0)
        luaL_addlstring(&b, chunk, got);
    if (f)
        fclose(f);
    luaL_pushresult(&b);
    kit_free_engine(e);
    return 3;
}
