/* wsserver's entry point: argv -> config -> app -> server -> ev_run. Exit codes: 0 after a clean
 * shutdown (or --check passing), 1 when the app fails to load or a listener cannot open, 2 for
 * usage and configuration errors. */
#include "ws/config.h"
#include "ws/err.h"
#include "ws/lb.h"
#include "ws/log.h"
#include "ws/server.h"

#include <ev.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define WS_VERSION "0.1.0"

static void usage(FILE *out)
{
    fprintf(out, "usage: wsserver [options] APP.lua\n\n"
                 "  -l, --listen ADDR        host:port, [v6]:port or unix:/path (repeatable)\n"
                 "      --check              load the app and its config, report problems, exit\n"
                 "  -h, --help               this help\n"
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

static int bad_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "wsserver: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n(see wsserver --help)\n");
    return 2;
}

/* Raises the open-file limit to the hard limit: every connection is a descriptor. */
static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void setup_log(const struct ws_config *cfg)
{
    ws_log_setup((enum ws_log_level)ws_log_level_parse(cfg->log_level),
                 (enum ws_log_format)ws_log_format_parse(cfg->log_format));
}

struct args {
    const char *app;
    bool check;
};

static int parse_args(int argc, char **argv, struct ws_config *cfg, struct args *args)
{
    char err[256];
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            usage(stdout);
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
    if (!args->app)
        return bad_usage("%s", "no app given: wsserver [options] APP.lua");
    return 0;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* SPEC §7: a vanished peer must not kill the process */
    struct ws_config cli;
    ws_config_init(&cli);
    struct args args = {0};
    int rc = parse_args(argc, argv, &cli, &args);
    if (rc)
        return rc;
    setup_log(&cli);
    raise_nofile();

    struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
    char err[512];
    struct lb_app *app = lb_app_new(loop, args.app, &cli, err, sizeof(err));
    ws_config_free(&cli);
    if (!app) {
        fprintf(stderr, "wsserver: %s\n", err);
        return 1;
    }
    if (ws_config_validate(&app->config, err, sizeof(err)) < 0) {
        fprintf(stderr, "wsserver: %s\n", err);
        lb_app_free(app);
        return 2;
    }
    setup_log(&app->config);
    if (args.check) {
        printf("%s: ok\n", args.app);
        lb_app_free(app);
        return 0;
    }
    struct ws_server *srv = ws_server_new(loop, &app->config, &lb_app_ops, app, err, sizeof(err));
    if (!srv) {
        fprintf(stderr, "wsserver: %s\n", err);
        lb_app_free(app);
        return 1;
    }
    if (lb_app_attach(app, srv, err, sizeof(err)) < 0) {
        fprintf(stderr, "wsserver: %s\n", err);
        ws_server_free(srv);
        lb_app_free(app);
        return 1;
    }
    ev_run(loop, 0);
    int code = srv->exit_code;
    ws_server_free(srv);
    lb_app_free(app);
    ws_log_msg(WS_LOG_INFO, "exit", "bye");
    return code;
}
