/* wsserver's entry point: argv -> config -> app -> server -> ev_run. Exit codes: 0 after a clean
 * shutdown (or --check passing), 1 when the app fails to load or a listener cannot open, 2 for
 * usage and configuration errors. */
#include "ws/config.h"
#include "ws/err.h"
#include "ws/lb.h"
#include "ws/bus.h"
#include "ws/log.h"
#include "ws/master.h"
#include "ws/metrics.h"
#include "ws/notify.h"
#include "ws/proc.h"
#include "ws/redis_client.h"
#include "ws/server.h"
#include "ws/transport.h"
#include "ws/watch.h"

#include <ctype.h>
#include <limits.h>
#include <pwd.h>
#include <errno.h>
#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WS_VERSION "0.1.0"

static void usage(FILE *out)
{
    fprintf(out, "usage: wsserver [options] APP.lua\n\n"
                 "  -l, --listen ADDR        host:port, [v6]:port, unix:/path; tls:ADDR for wss:// "
                 "(repeatable)\n"
                 "      --check              all a start does but listen (load() too); exit 0/1\n"
                 "      --reload PIDFILE|PID reload a running server's app and print the result\n"
                 "      --test [ARGS]        run the app's busted specs with ws.testing (first)\n"
                 "  -h, --help               this help\n"
                 "      --help-man           the options below as the man page's roff source\n"
                 "  -V, --version            print the version\n\n"
                 "Every option below can also be set in the app's config table (snake_case);\n"
                 "the command line wins.\n\n");
    for (const struct ws_option *opt = ws_options; opt->name; opt++) {
        char flag[64];
        snprintf(flag, sizeof(flag), "--%s%s%s", opt->name, opt->arg ? " " : "",
                 opt->arg ? opt->arg : "");
        for (char *p = flag + 2; *p && *p != ' '; p++)
            if (*p == '_')
                *p = '-';
        fprintf(out, "      %-28s %s\n", flag, opt->help);
    }
}

/* Writes s for roff: '-' and '\\' escaped, so flags and paths print as typed. */
static void roff(FILE *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '-' || *s == '\\')
            fputc('\\', out);
        fputc(*s, out);
    }
}

/* wsserver --help-man: the OPTIONS entries of docs/wsserver.1, from the option table with each
 * option's default (from ws_config_init), its range or choices, and whether a reload applies it
 * (scripts/gen-man.sh puts them into docs/wsserver.1.in). */
static void usage_man(FILE *out)
{
    struct ws_config defaults;
    ws_config_init(&defaults);
    for (const struct ws_option *opt = ws_options; opt->name; opt++) {
        char flag[64], value[256];
        snprintf(flag, sizeof(flag), "%s", opt->name);
        for (char *p = flag; *p; p++)
            if (*p == '_')
                *p = '-';
        fprintf(out, ".TP\n.B %s\\-\\-", strcmp(opt->name, "listen") == 0 ? "\\-l, " : "");
        roff(out, flag);
        if (opt->arg) {
            fprintf(out, " \\fI");
            roff(out, opt->arg);
            fprintf(out, "\\fR");
        }
        fprintf(out, "\n");
        roff(out, opt->help);
        fprintf(out, ".\n.br\nConfig key \\fB");
        roff(out, opt->name);
        fprintf(out, "\\fR");
        ws_config_format(&defaults, opt, value, sizeof(value));
        if (*value || opt->type == WS_OPT_STRING) {
            fprintf(out, "; default \\fB");
            roff(out, *value ? value : "none");
            fprintf(out, "\\fR");
        }
        if (opt->type == WS_OPT_INT)
            fprintf(out, "; range %.0f to %.0f", opt->min, opt->max);
        else if (opt->type == WS_OPT_SECONDS)
            fprintf(out, "; range %g to %g seconds", opt->min, opt->max);
        else if (opt->type == WS_OPT_BOOL)
            fprintf(out, "; true or false (the flag alone: true)");
        for (const char *const *c = opt->choices; c && *c; c++) {
            fprintf(out, "%s", c == opt->choices ? "; one of " : ", ");
            roff(out, *c);
        }
        if (opt->type == WS_OPT_LIST)
            fprintf(out, "; repeatable, or a list in the config table");
        fprintf(out, "; %s.\n",
                opt->live ? "a reload applies a change" : "a change needs a restart");
    }
    ws_config_free(&defaults);
}

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "wsserver: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see wsserver --help)\n");
    return 2;
}

/* Level, format and destination of the log; open_file false keeps the lines on stderr
 * (--check creates no log file). Returns 0, or 1 after printing why the file cannot open. */
static int setup_log(const struct ws_config *cfg, bool open_file)
{
    ws_log_setup((enum ws_log_level)ws_log_level_parse(cfg->log_level),
                 (enum ws_log_format)ws_log_format_parse(cfg->log_format));
    char err[PATH_MAX + 64];
    if (ws_log_open(open_file ? cfg->log_file : NULL, err, sizeof(err)) < 0) {
        fprintf(stderr, "wsserver: %s\n", err);
        return 1;
    }
    return 0;
}

struct args {
    const char *app;
    const char *reload; /* --reload target */
    bool check;
};

static bool read_file(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return false;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = 0;
    fclose(f);
    return n > 0;
}

/* wsserver --reload PIDFILE|PID: SIGHUP the server, wait for the result it publishes, print it.
 * Exit 0 when the new version took over, 1 when it was refused (the old one keeps running) or
 * no answer came. The status file is looked for where the server may have written it (the
 * pidfile's folder, $RUNTIME_DIRECTORY, /tmp): whichever changes after the signal answers. */
static int reload_running(const char *target)
{
    char buf[64];
    const char *digits = target;
    const char *pidfile = NULL;
    if (!isdigit((unsigned char)target[0])) {
        pidfile = target;
        if (!read_file(target, buf, sizeof(buf))) {
            fprintf(stderr, "wsserver: --reload: cannot read pid file %s: %s\n", target,
                    strerror(errno));
            return 1;
        }
        digits = buf;
    }
    char *end;
    long pid = strtol(digits, &end, 10);
    if (pid <= 0 || (*end && *end != '\n')) {
        fprintf(stderr, "wsserver: --reload: not a process id: %s\n", digits);
        return 1;
    }
    enum { CANDIDATES = 3 };
    char path[CANDIDATES][PATH_MAX], before[CANDIDATES][1024], now[1024] = "";
    int n = 0;
    for (; n < CANDIDATES && lb_status_path(path[n], PATH_MAX, pidfile, pid, n) == 0; n++) {
        before[n][0] = 0;
        read_file(path[n], before[n], sizeof(before[n]));
    }
    if (kill((pid_t)pid, SIGHUP) < 0) {
        fprintf(stderr, "wsserver: --reload: process %ld: %s\n", pid, strerror(errno));
        return 1;
    }
    for (int i = 0; i < 200; i++) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
        for (int k = 0; k < n; k++) {
            if (read_file(path[k], now, sizeof(now)) && strcmp(now, before[k]) != 0) {
                printf("%s", now);
                return strstr(now, "result=ok") ? 0 : 1;
            }
        }
    }
    fprintf(stderr, "wsserver: --reload: no answer from process %ld within 10 s (looked for", pid);
    for (int k = 0; k < n; k++)
        fprintf(stderr, " %s", path[k]);
    fprintf(stderr, ")\n");
    return 1;
}

/* wsserver --test [busted args]: runs the app's specs with busted under Lua 5.4 and the Lua
 * library (ws.testing) on the path the server itself uses, wherever wsserver is installed. */
static int run_specs(int argc, char **argv)
{
    const char *busted = getenv("BUSTED") ? getenv("BUSTED") : "/usr/bin/busted";
    if (access(busted, R_OK) < 0) {
        fprintf(stderr, "wsserver --test: busted not found (apt install lua-busted lua-cjson)\n");
        return 2;
    }
    char lib[LB_LIB_PATH_MAX], lpath[LB_LIB_PATH_MAX + PATH_MAX];
    lb_lib_path(lib, sizeof(lib));
    const char *old = getenv("LUA_PATH");
    snprintf(lpath, sizeof(lpath), "%s%s", lib, old ? old : ";"); /* ";;": Lua's default path */
    setenv("LUA_PATH", lpath, 1);
    /* ws.kitcore, the real server for testing.start: beside the binary or installed */
    char exe[PATH_MAX], cpath[3 * PATH_MAX + 64];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[n > 0 ? n : 0] = 0;
    char *slash = strrchr(exe, '/');
    if (slash)
        *slash = 0;
    const char *oldc = getenv("LUA_CPATH");
    snprintf(cpath, sizeof(cpath), "%s/lua/?.so;" WS_LUA_DIR "/?.so;%s", exe, oldc ? oldc : ";");
    setenv("LUA_CPATH", cpath, 1);
    char **args = calloc((size_t)argc + 3, sizeof(*args));
    int k = 0;
    args[k++] = "lua5.4";
    args[k++] = (char *)busted;
    for (int i = 2; i < argc; i++)
        args[k++] = argv[i];
    args[k] = NULL;
    execvp("lua5.4", args);
    fprintf(stderr, "wsserver --test: cannot run lua5.4: %s\n", strerror(errno));
    free(args);
    return 2;
}

static void on_watch(void *ctx)
{
    struct lb_app *app = ctx;
    if (access(app->path, R_OK) < 0) {
        /* deleted (or mid-rename): keep the running version; the next save reloads */
        ws_log_msg(WS_LOG_WARN, "app_missing", "app file is gone; keeping the running version");
        return;
    }
    lb_app_reload(app, "watch");
}

/* SIGUSR1: reopen the log file (logrotate has moved it). */
static void on_usr1(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)w;
    (void)revents;
    ws_log_reopen();
}

static int parse_args(int argc, char **argv, struct ws_config *cfg, struct args *args)
{
    char err[256];
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
            exit(0);
        }
        if (strcmp(arg, "--help-man") == 0) {
            usage_man(stdout);
            exit(0);
        }
        if (strcmp(arg, "-V") == 0 || strcmp(arg, "--version") == 0) {
            printf("wsserver " WS_VERSION "\n");
            exit(0);
        }
        if (strcmp(arg, "--check") == 0) {
            args->check = true;
            continue;
        }
        if (strcmp(arg, "--reload") == 0) {
            if (i + 1 >= argc)
                return bad_usage("%s", "--reload needs a pid file or a pid");
            args->reload = argv[++i];
            continue;
        }
        if (arg[0] != '-' || strcmp(arg, "-") == 0) {
            if (args->app)
                return bad_usage("one app file only (got a second: %s)", arg);
            args->app = arg;
            continue;
        }
        const struct ws_option *opt;
        const char *value = NULL;
        char name[64];
        if (strcmp(arg, "-l") == 0) {
            opt = ws_config_find("listen", false);
        } else if (strncmp(arg, "--", 2) == 0) {
            const char *eq = strchr(arg, '=');
            size_t n = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);
            if (n >= sizeof(name))
                return bad_usage("unknown option %s", arg);
            memcpy(name, arg + 2, n);
            name[n] = 0;
            opt = ws_config_find(name, true);
            if (eq)
                value = eq + 1;
        } else {
            return bad_usage("unknown option %s", arg);
        }
        if (!opt)
            return bad_usage("unknown option %s", arg);
        if (!value) {
            if (opt->type == WS_OPT_BOOL)
                value = "true";
            else if (i + 1 < argc)
                value = argv[++i];
            else
                return bad_usage("option %s needs a value", arg);
        }
        if (ws_config_set(cfg, opt, value, true, err, sizeof(err)) < 0)
            return bad_usage("%s", err);
    }
    if (!args->app && !args->reload)
        return bad_usage("%s", "no app given: wsserver [options] APP.lua");
    return 0;
}

/* What every serving process starts from. */
struct start {
    const char *path;
    struct ws_config cli;
    pid_t master;                   /* 0 when single-process */
    struct ws_metrics_board *board; /* shared by the workers, or NULL */
};

/* Loads the app and checks its configuration; NULL after printing why, with the exit code. */
static struct lb_app *load_app(struct ev_loop *loop, const struct start *st, bool check, int *code)
{
    char err[512];
    bool config_error = false;
    struct lb_app *app = lb_app_new(loop, st->path, &st->cli, &config_error, err, sizeof(err));
    if (!app) {
        fprintf(stderr, "wsserver: %s\n", err);
        *code = config_error && !check ? 2 : 1;
        return NULL;
    }
    if (ws_config_validate(&app->config, err, sizeof(err)) < 0) {
        fprintf(stderr, "wsserver: %s\n", err);
        lb_app_free(app);
        *code = check ? 1 : 2;
        return NULL;
    }
    if (setup_log(&app->config, !check) != 0) {
        lb_app_free(app);
        *code = 1;
        return NULL;
    }
    return app;
}

/* Runs one serving process: the only one, or worker index (1..N) with its end of the hub. */
static int serve(struct start *st, int index, int hub_fd)
{
    struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
    ws_log_set_worker(index);
    int code = 1;
    struct lb_app *app = load_app(loop, st, false, &code);
    if (!app)
        return code;
    if (st->master)
        app->status_pid = st->master; /* --reload asks the master */
    char err[512];
    struct ws_server *srv = ws_server_new(loop, &app->config, &lb_app_ops, app, err, sizeof(err));
    if (!srv) {
        fprintf(stderr, "wsserver: %s\n", err);
        lb_app_free(app);
        return 1;
    }
    /* as soon as the listeners are ours (a second instance that cannot listen must not touch
     * it), and before dropping privileges: /run may be root's */
    char *pidfile = app->config.pidfile && !st->master ? strdup(app->config.pidfile) : NULL;
    if (pidfile)
        ws_proc_write_pidfile(pidfile);
    srv->worker = index;
    ws_metrics_attach(srv, st->board, index, WS_VERSION);
    /* connection ids stay unique across the workers of a node (and below 2^53 for JSON) */
    srv->env.next_id = (uint64_t)index << 40;
    struct ws_bus *bus = NULL;
    if (app->config.redis) {
        bus = ws_bus_redis_new(loop, app->config.redis, NULL, NULL, err, sizeof(err));
        if (!bus) {
            fprintf(stderr, "wsserver: %s\n", err);
            ws_metrics_detach(srv);
            ws_server_free(srv);
            ws_proc_remove_pidfile(pidfile);
            free(pidfile);
            lb_app_free(app);
            return 2;
        }
        if (hub_fd >= 0)
            close(hub_fd);
    } else if (hub_fd >= 0) {
        bus = ws_bus_hub_new(loop, hub_fd, NULL, NULL);
    }
    if (bus)
        ws_server_set_bus(srv, bus);
    struct ws_watch *watch = NULL;
    if (app->config.user && ws_proc_drop_privileges(app->config.user, err, sizeof(err)) < 0) {
        fprintf(stderr, "wsserver: %s\n", err);
    } else if (lb_app_attach(app, srv, err, sizeof(err)) < 0) {
        fprintf(stderr, "wsserver: %s\n", err);
    } else {
        if (app->config.watch) {
            watch = ws_watch_new(loop, app->dir, 0.2, on_watch, app, err, sizeof(err));
            if (!watch)
                ws_log_msg(WS_LOG_WARN, "watch_unavailable", err);
        }
        ev_signal usr1;
        ev_signal_init(&usr1, on_usr1, SIGUSR1);
        ev_signal_start(loop, &usr1);
        ws_notify_ready(); /* systemd Type=notify: listening, app loaded */
        ev_run(loop, 0);
        /* the shutdown is done: a second SIGTERM (a supervisor repeating itself) must not turn
         * the clean exit into a death by signal once the loop's watchers are gone */
        signal(SIGTERM, SIG_IGN);
        signal(SIGINT, SIG_IGN);
        ev_signal_stop(loop, &usr1);
        code = 0; /* the loop ends only after a graceful shutdown */
    }
    ws_watch_free(watch);
    ws_metrics_detach(srv);
    ws_server_free(srv);
    ws_proc_remove_pidfile(pidfile);
    free(pidfile);
    lb_app_free(app);
    ws_log_msg(WS_LOG_INFO, "exit", "bye");
    ws_log_flush();
    return code;
}

static int worker_main(void *arg, int index, int hub_fd)
{
    return serve(arg, index, hub_fd);
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* SPEC §7: a vanished peer must not kill the process */
    if (argc > 1 && strcmp(argv[1], "--test") == 0)
        return run_specs(argc, argv);
    struct start st = {0};
    ws_config_init(&st.cli);
    struct args args = {0};
    int rc = parse_args(argc, argv, &st.cli, &args);
    if (rc) {
        ws_config_free(&st.cli);
        return rc;
    }
    if (args.reload) {
        ws_config_free(&st.cli);
        return reload_running(args.reload);
    }
    st.path = args.app;
    signal(SIGUSR1, SIG_IGN); /* until the loop reopens the log on it */
    if (setup_log(&st.cli, !args.check) != 0) {
        ws_config_free(&st.cli);
        return 1;
    }
    ws_proc_raise_nofile();

    /* Load once here: --check, and the settings that decide how many processes to run. */
    struct ev_loop *probe = ev_loop_new(EVFLAG_AUTO);
    int code = 1;
    struct lb_app *app = load_app(probe, &st, args.check, &code);
    if (!app) {
        ev_loop_destroy(probe);
        ws_config_free(&st.cli);
        return code;
    }
    int workers = (int)app->config.workers;
    if (workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        workers = n > 0 ? (int)n : 1;
    }
    double shutdown_timeout = app->config.shutdown_timeout;
    char *pidfile = app->config.pidfile ? strdup(app->config.pidfile) : NULL;
    struct ws_redis_addr redis_addr;
    bool bad_redis = app->config.redis && ws_redis_parse_url(app->config.redis, &redis_addr) < 0;
    bool unix_listener = false;
    for (size_t i = 0; i < app->config.listen.n; i++)
        unix_listener = unix_listener || strstr(app->config.listen.items[i], "unix:") != NULL;
    if (args.check) {
        /* everything a start does short of listening: load(), the TLS files, the options that
         * are checked only when the processes start */
        char err[512] = "";
        if (lb_app_check(app, err, sizeof(err)) == 0 && app->config.tls_cert) {
            struct ws_tls_ctx *tls =
                ws_tls_ctx_new(app->config.tls_cert, app->config.tls_key, err, sizeof(err));
            ws_tls_ctx_free(tls);
        }
        if (!err[0] && bad_redis)
            snprintf(err, sizeof(err), "invalid value for redis: expected redis://host:port");
        if (!err[0] && workers > 1 && unix_listener)
            snprintf(err, sizeof(err), "unix: listeners need workers = 1");
        if (!err[0] && app->config.user && !getpwnam(app->config.user))
            snprintf(err, sizeof(err), "--user %s: no such user", app->config.user);
        if (err[0]) {
            fprintf(stderr, "wsserver: %s\n", err);
            lb_app_free(app);
            ev_loop_destroy(probe);
            free(pidfile);
            ws_config_free(&st.cli);
            return 1;
        }
    }
    lb_app_free(app);
    ev_loop_destroy(probe);
    if (args.check) {
        printf("%s: ok\n", args.app);
        code = 0;
    } else if (bad_redis) {
        fprintf(stderr, "wsserver: invalid value for redis: expected redis://host:port\n");
        code = 2;
    } else if (workers > 1 && unix_listener) {
        fprintf(stderr, "wsserver: unix: listeners need workers = 1\n");
        code = 2;
    } else if (workers > 1) {
        st.master = getpid();
        if (pidfile)
            ws_proc_write_pidfile(pidfile);
        st.board = ws_metrics_board_new(workers); /* every worker's /metrics shows them all */
        code = ws_master_run(workers, shutdown_timeout, worker_main, &st);
        ws_metrics_board_free(st.board);
        ws_proc_remove_pidfile(pidfile);
        char status[PATH_MAX]; /* the workers wrote it */
        for (int i = 0; lb_status_path(status, sizeof(status), pidfile, getpid(), i) == 0; i++)
            unlink(status);
        ws_log_flush();
    } else {
        code = serve(&st, 0, -1);
    }
    free(pidfile);
    ws_config_free(&st.cli);
    return code;
}
