/* The option table and its setters. All range checks live here so the command line, the app's
 * config table and reloads report the same message for the same mistake. */
#include "ws/config.h"

#include "ws/buf.h"
#include "ws/cidr.h"
#include "ws/err.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define OFF(field) offsetof(struct ws_config, field)
#define SECONDS_MAX 86400.0
#define SIZE_LIMIT 4294967296.0 /* 4 GiB: the largest size any byte option accepts */

static const char *const backpressure_choices[] = {"close", "drop", NULL};
static const char *const compression_choices[] = {"off", "on", NULL};
static const char *const log_level_choices[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_format_choices[] = {"text", "json", NULL};

const struct ws_option ws_options[] = {
    {"listen", WS_OPT_LIST, OFF(listen), 0, 0, NULL, false, "ADDR",
     "host:port, [v6]:port or unix:/path; tls: in front for wss:// (repeatable; default "
     "0.0.0.0:8080)"},
    {"tls_cert", WS_OPT_STRING, OFF(tls_cert), 0, 0, NULL, false, "FILE",
     "certificate chain (PEM) for wss://"},
    {"tls_key", WS_OPT_STRING, OFF(tls_key), 0, 0, NULL, false, "FILE", "private key (PEM)"},
    {"static", WS_OPT_STRING, OFF(static_dir), 0, 0, NULL, false, "DIR",
     "serve files from DIR for plain HTTP GET/HEAD"},
    {"max_connections", WS_OPT_INT, OFF(max_connections), 1, 10000000, NULL, true, "N",
     "open connections at most (default 10000); 503 beyond"},
    {"max_connections_per_ip", WS_OPT_INT, OFF(max_connections_per_ip), 0, 10000000, NULL, true,
     "N", "connections per client address (default 0: off)"},
    {"max_header_size", WS_OPT_INT, OFF(max_header_size), 256, 1048576, NULL, true, "BYTES",
     "request head bytes (default 8192); 431 beyond"},
    {"max_body_size", WS_OPT_INT, OFF(max_body_size), 0, SIZE_LIMIT, NULL, true, "BYTES",
     "request body bytes for http routes (default 1048576); 413 beyond"},
    {"allowed_origins", WS_OPT_LIST, OFF(allowed_origins), 0, 0, NULL, true, "ORIGIN",
     "browser origins allowed to open WebSockets (https://example.com, https://*.example.com; "
     "default: any); others get 403"},
    {"trusted_proxies", WS_OPT_LIST, OFF(trusted_proxies), 0, 0, NULL, true, "CIDR",
     "proxies whose X-Forwarded-For / Forwarded client address is believed (e.g. 10.0.0.0/8)"},
    {"max_message_size", WS_OPT_INT, OFF(max_message_size), 1, SIZE_LIMIT, NULL, true, "BYTES",
     "reassembled message bytes (default 1048576); 1009 beyond"},
    {"max_buffered", WS_OPT_INT, OFF(max_buffered), 1024, SIZE_LIMIT, NULL, true, "BYTES",
     "queued output bytes per connection (default 1048576)"},
    {"max_buffered_total", WS_OPT_INT, OFF(max_buffered_total), 65536, 1099511627776.0, NULL, true,
     "BYTES", "queued output bytes of all connections together (default 268435456)"},
    {"backpressure", WS_OPT_CHOICE, OFF(backpressure), 0, 0, backpressure_choices, true, "MODE",
     "close (1008 to a slow consumer) or drop (data messages dropped); default close"},
    {"handshake_timeout", WS_OPT_SECONDS, OFF(handshake_timeout), 0.01, SECONDS_MAX, NULL, true,
     "S", "seconds to complete the opening handshake (default 10)"},
    {"close_timeout", WS_OPT_SECONDS, OFF(close_timeout), 0.01, SECONDS_MAX, NULL, true, "S",
     "seconds to wait for the peer's close reply (default 5)"},
    {"shutdown_timeout", WS_OPT_SECONDS, OFF(shutdown_timeout), 0, SECONDS_MAX, NULL, true, "S",
     "seconds a graceful shutdown waits for connections (default 10)"},
    {"ping_interval", WS_OPT_SECONDS, OFF(ping_interval), 0, SECONDS_MAX, NULL, true, "S",
     "ping a connection idle this long, 0 off (default 30)"},
    {"pong_timeout", WS_OPT_SECONDS, OFF(pong_timeout), 0.01, SECONDS_MAX, NULL, true, "S",
     "seconds to wait for the pong before closing with 1001 (default 10)"},
    {"idle_timeout", WS_OPT_SECONDS, OFF(idle_timeout), 0, SECONDS_MAX, NULL, true, "S",
     "close after this long without a data message, 0 off (default 0)"},
    {"handler_timeout", WS_OPT_SECONDS, OFF(handler_timeout), 0.001, 3600, NULL, true, "S",
     "a handler running longer between two waits is interrupted (default 1)"},
    {"io_timeout", WS_OPT_SECONDS, OFF(io_timeout), 0.001, SECONDS_MAX, NULL, true, "S",
     "default timeout of a waiting call (ws.http, ...) (default 10)"},
    {"max_pending_bytes", WS_OPT_INT, OFF(max_pending_bytes), 0, SIZE_LIMIT, NULL, true, "BYTES",
     "message bytes queued behind a waiting handler before the connection stops reading "
     "(default 0: 2 x max_message_size)"},
    {"http_max_concurrent", WS_OPT_INT, OFF(http_max_concurrent), 1, 1000000, NULL, true, "N",
     "outbound HTTP requests in flight; more wait their turn (default 256)"},
    {"lua_memory_limit", WS_OPT_INT, OFF(lua_memory_limit), 1048576, 1099511627776.0, NULL, true,
     "BYTES", "Lua heap cap (default 536870912)"},
    {"protocols", WS_OPT_LIST, OFF(protocols), 0, 0, NULL, true, "NAME",
     "subprotocol the server speaks, in preference order (repeatable)"},
    {"compression", WS_OPT_CHOICE, OFF(compression), 0, 0, compression_choices, false, "MODE",
     "permessage-deflate: off or on (default off)"},
    {"compress_min_size", WS_OPT_INT, OFF(compress_min_size), 0, SIZE_LIMIT, NULL, false, "BYTES",
     "smallest message compressed (default 128)"},
    {"compression_window_bits", WS_OPT_INT, OFF(compression_window_bits), 9, 15, NULL, false,
     "BITS", "deflate window of our compressor, 9..15 (default 15)"},
    {"compression_mem_level", WS_OPT_INT, OFF(compression_mem_level), 1, 9, NULL, false, "N",
     "zlib memLevel 1..9 (default 8)"},
    {"compression_level", WS_OPT_INT, OFF(compression_level), 1, 9, NULL, false, "N",
     "zlib level 1..9 (default 6)"},
    {"compression_context_takeover", WS_OPT_BOOL, OFF(compression_context_takeover), 0, 0, NULL,
     false, NULL,
     "keep our compressor's window between messages: better ratio, ~260 KiB per connection "
     "(default off: one shared compressor, broadcasts compressed once)"},
    {"compression_client_no_context_takeover", WS_OPT_BOOL,
     OFF(compression_client_no_context_takeover), 0, 0, NULL, false, NULL,
     "ask clients to reset their compressor per message: no inflater kept per connection "
     "(~40 KiB saved each), at some cost in ratio (default off)"},
    {"fragment_size", WS_OPT_INT, OFF(fragment_size), 0, SIZE_LIMIT, NULL, true, "BYTES",
     "split outgoing messages larger than this into fragments, 0 never (default 0)"},
    {"metrics", WS_OPT_BOOL, OFF(metrics), 0, 0, NULL, true, NULL, "serve /metrics"},
    {"metrics_listen", WS_OPT_STRING, OFF(metrics_listen), 0, 0, NULL, false, "ADDR",
     "serve /metrics and /healthz on this listener instead of the app's (kept open while "
     "draining)"},
    {"workers", WS_OPT_INT, OFF(workers), 0, 1024, NULL, false, "N|auto",
     "worker processes sharing the port (default 1; auto or 0: one per CPU)"},
    {"redis", WS_OPT_STRING, OFF(redis), 0, 0, NULL, false, "URL", "Redis for scale-out"},
    {"log_level", WS_OPT_CHOICE, OFF(log_level), 0, 0, log_level_choices, true, "L",
     "debug|info|warn|error (default info)"},
    {"log_format", WS_OPT_CHOICE, OFF(log_format), 0, 0, log_format_choices, true, "F",
     "text|json (default text)"},
    {"log_file", WS_OPT_STRING, OFF(log_file), 0, 0, NULL, false, "FILE",
     "append the log to FILE instead of stderr; SIGUSR1 reopens it (logrotate)"},
    {"watch", WS_OPT_BOOL, OFF(watch), 0, 0, NULL, false, NULL,
     "reload the app when its file or a module under its folder changes"},
    {"pidfile", WS_OPT_STRING, OFF(pidfile), 0, 0, NULL, false, "FILE",
     "write the process id to FILE (removed at exit)"},
    {"user", WS_OPT_STRING, OFF(user), 0, 0, NULL, false, "NAME",
     "switch to this user (and its group) after opening the listeners"},
    {NULL, 0, 0, 0, 0, NULL, false, NULL, NULL},
};

#define FIELD(cfg, opt, type) ((type *)((char *)(cfg) + (opt)->offset))

size_t ws_config_index(const struct ws_option *opt)
{
    return (size_t)(opt - ws_options);
}

static void set_string(char **slot, const char *value)
{
    free(*slot);
    *slot = value ? ws_xstrndup(value, strlen(value)) : NULL;
}

void ws_config_init(struct ws_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_connections = 10000;
    cfg->max_header_size = 8192;
    cfg->max_body_size = 1048576;
    cfg->max_message_size = 1048576;
    cfg->max_buffered = 1048576;
    cfg->max_buffered_total = 268435456;
    set_string(&cfg->backpressure, "close");
    cfg->handshake_timeout = 10;
    cfg->close_timeout = 5;
    cfg->shutdown_timeout = 10;
    cfg->ping_interval = 30;
    cfg->pong_timeout = 10;
    cfg->handler_timeout = 1;
    cfg->io_timeout = 10;
    cfg->http_max_concurrent = 256;
    cfg->lua_memory_limit = 536870912;
    set_string(&cfg->compression, "off");
    cfg->compress_min_size = 128;
    cfg->compression_window_bits = 15;
    cfg->compression_mem_level = 8;
    cfg->compression_level = 6;
    cfg->workers = 1;
    set_string(&cfg->log_level, "info");
    set_string(&cfg->log_format, "text");
}

static void list_clear(struct ws_string_list *list)
{
    for (size_t i = 0; i < list->n; i++)
        free(list->items[i]);
    list->n = 0;
}

void ws_config_free(struct ws_config *cfg)
{
    for (const struct ws_option *opt = ws_options; opt->name; opt++) {
        if (opt->type == WS_OPT_STRING || opt->type == WS_OPT_CHOICE)
            set_string(FIELD(cfg, opt, char *), NULL);
        else if (opt->type == WS_OPT_LIST)
            list_clear(FIELD(cfg, opt, struct ws_string_list));
    }
}

void ws_config_copy(struct ws_config *dst, const struct ws_config *src)
{
    memcpy(dst, src, sizeof(*dst));
    for (const struct ws_option *opt = ws_options; opt->name; opt++) {
        if (opt->type == WS_OPT_STRING || opt->type == WS_OPT_CHOICE) {
            char **slot = FIELD(dst, opt, char *);
            *slot = NULL;
            set_string(slot, *FIELD(src, opt, char *const));
        } else if (opt->type == WS_OPT_LIST) {
            struct ws_string_list *list = FIELD(dst, opt, struct ws_string_list);
            for (size_t i = 0; i < list->n; i++)
                list->items[i] = ws_xstrndup(list->items[i], strlen(list->items[i]));
        }
    }
}

const struct ws_option *ws_config_find(const char *name, bool kebab)
{
    for (const struct ws_option *opt = ws_options; opt->name; opt++) {
        size_t i = 0;
        for (; opt->name[i] && name[i]; i++) {
            char want = opt->name[i] == '_' && kebab ? '-' : opt->name[i];
            if (name[i] != want)
                break;
        }
        if (!opt->name[i] && !name[i])
            return opt;
    }
    return NULL;
}

static int fail(char *err, size_t errlen, const char *fmt, const char *name, const char *detail)
{
    snprintf(err, errlen, fmt, name, detail);
    return WS_E_INVAL;
}

static bool mark(struct ws_config *cfg, const struct ws_option *opt, bool from_cli)
{
    uint64_t bit = 1ull << ws_config_index(opt);
    if (!from_cli && (cfg->cli_mask & bit))
        return false; /* the command line wins */
    cfg->set_mask |= bit;
    if (from_cli)
        cfg->cli_mask |= bit;
    return true;
}

void ws_config_describe(const struct ws_option *opt, char *out, size_t cap)
{
    switch (opt->type) {
    case WS_OPT_INT:
        snprintf(out, cap, "a whole number from %.0f to %.0f%s", opt->min, opt->max,
                 opt->offset == OFF(workers) ? " or \"auto\"" : "");
        return;
    case WS_OPT_SECONDS:
        snprintf(out, cap, "a number of seconds from %g to %g", opt->min, opt->max);
        return;
    case WS_OPT_BOOL:
        snprintf(out, cap, "true or false");
        return;
    case WS_OPT_STRING:
        snprintf(out, cap, "%s",
                 opt->offset == OFF(static_dir) ? "a readable folder" : "a non-empty string");
        return;
    case WS_OPT_CHOICE:
        snprintf(out, cap, "one of ");
        for (const char *const *c = opt->choices; *c; c++) {
            if (c != opt->choices)
                strncat(out, ", ", cap - strlen(out) - 1);
            strncat(out, *c, cap - strlen(out) - 1);
        }
        return;
    case WS_OPT_LIST:
        snprintf(out, cap, "a string or a list of strings");
        return;
    }
}

int ws_config_wrong_type(const struct ws_option *opt, const char *got, char *err, size_t errlen)
{
    char allowed[160];
    ws_config_describe(opt, allowed, sizeof(allowed));
    snprintf(err, errlen, "invalid value for %s: must be %s (got a %s)", opt->name, allowed, got);
    return WS_E_INVAL;
}

static int range_error(const struct ws_option *opt, char *err, size_t errlen)
{
    char allowed[160];
    ws_config_describe(opt, allowed, sizeof(allowed));
    snprintf(err, errlen, "invalid value for %s: must be %s", opt->name, allowed);
    return WS_E_INVAL;
}

/* A listen address: "host:port", "[v6]:port", ":port" or "unix:/path", "tls:" in front for
 * wss://. Checked here, not at bind, so a bad port is refused with the option's name instead
 * of being wrapped around by the resolver (99999 would listen on 34463). */
static int check_listen(const char *value, char *err, size_t errlen)
{
    const char *addr = strncmp(value, "tls:", 4) == 0 ? value + 4 : value;
    if (strncmp(addr, "unix:", 5) == 0) {
        struct sockaddr_un sun;
        size_t n = strlen(addr + 5);
        if (n == 0 || n >= sizeof(sun.sun_path)) {
            snprintf(err, errlen,
                     "invalid value for listen: '%.200s': a unix socket path of 1 to %zu bytes",
                     value, sizeof(sun.sun_path) - 1);
            return WS_E_INVAL;
        }
        return 0;
    }
    const char *colon = NULL;
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        colon = end && end[1] == ':' && end > addr + 1 ? end + 1 : NULL;
    } else {
        colon = strrchr(addr, ':');
    }
    if (!colon) {
        snprintf(err, errlen,
                 "invalid value for listen: '%.200s': expected host:port, [v6]:port or "
                 "unix:/path (tls: in front for wss://)",
                 value);
        return WS_E_INVAL;
    }
    const char *port = colon + 1;
    size_t digits = strspn(port, "0123456789");
    long n = digits && digits <= 5 && !port[digits] ? strtol(port, NULL, 10) : 0;
    if (n < 1 || n > 65535) {
        snprintf(err, errlen,
                 "invalid value for listen: '%.200s': the port must be a number from 1 to 65535",
                 value);
        return WS_E_INVAL;
    }
    return 0;
}

/* --static / static: an existing folder this process can list and read. */
static int check_folder(const struct ws_option *opt, const char *value, char *err, size_t errlen)
{
    struct stat st;
    const char *why = NULL;
    if (stat(value, &st) < 0)
        why = strerror(errno);
    else if (!S_ISDIR(st.st_mode))
        why = "not a folder";
    else if (access(value, R_OK | X_OK) < 0)
        why = strerror(errno);
    if (!why)
        return 0;
    snprintf(err, errlen, "invalid value for %s: '%.200s' must be a readable folder (%s)",
             opt->name, value, why);
    return WS_E_INVAL;
}

static int set_number(struct ws_config *cfg, const struct ws_option *opt, double v, bool from_cli,
                      char *err, size_t errlen)
{
    if (isnan(v) || v < opt->min || v > opt->max)
        return range_error(opt, err, errlen);
    if (opt->type == WS_OPT_INT && v != floor(v))
        return range_error(opt, err, errlen);
    if (!mark(cfg, opt, from_cli))
        return 0;
    if (opt->type == WS_OPT_INT)
        *FIELD(cfg, opt, int64_t) = (int64_t)v;
    else
        *FIELD(cfg, opt, double) = v;
    return 0;
}

static int set_bool(struct ws_config *cfg, const struct ws_option *opt, bool value, bool from_cli,
                    char *err, size_t errlen)
{
    if (opt->type != WS_OPT_BOOL)
        return ws_config_wrong_type(opt, "boolean", err, errlen);
    if (mark(cfg, opt, from_cli))
        *FIELD(cfg, opt, bool) = value;
    return 0;
}

int ws_config_set(struct ws_config *cfg, const struct ws_option *opt, const char *value,
                  bool from_cli, char *err, size_t errlen)
{
    switch (opt->type) {
    case WS_OPT_INT:
    case WS_OPT_SECONDS: {
        if (strcmp(opt->name, "workers") == 0 && strcmp(value, "auto") == 0)
            value = "0"; /* one per CPU, resolved at start-up */
        char *end;
        errno = 0;
        double v = strtod(value, &end);
        if (end == value || *end || errno)
            return range_error(opt, err, errlen);
        return set_number(cfg, opt, v, from_cli, err, errlen);
    }
    case WS_OPT_BOOL:
        if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0)
            return set_bool(cfg, opt, true, from_cli, err, errlen);
        if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0)
            return set_bool(cfg, opt, false, from_cli, err, errlen);
        return fail(err, errlen, "invalid value for %s: must be %s", opt->name, "true or false");
    case WS_OPT_STRING:
        if (!*value)
            return fail(err, errlen, "invalid value for %s: %s", opt->name, "must not be empty");
        if (opt->offset == OFF(static_dir) && check_folder(opt, value, err, errlen) < 0)
            return WS_E_INVAL;
        if (mark(cfg, opt, from_cli))
            set_string(FIELD(cfg, opt, char *), value);
        return 0;
    case WS_OPT_CHOICE:
        for (const char *const *c = opt->choices; *c; c++) {
            if (strcmp(*c, value) == 0) {
                if (mark(cfg, opt, from_cli))
                    set_string(FIELD(cfg, opt, char *), value);
                return 0;
            }
        }
        return range_error(opt, err, errlen);
    case WS_OPT_LIST: {
        struct ws_string_list *list = FIELD(cfg, opt, struct ws_string_list);
        if (!*value)
            return fail(err, errlen, "invalid value for %s: %s", opt->name, "must not be empty");
        /* a bad value is refused even where the command line wins: it is still a mistake */
        if (opt->offset == OFF(listen) && check_listen(value, err, errlen) < 0)
            return WS_E_INVAL;
        if (!mark(cfg, opt, from_cli))
            return 0; /* before the limit: a full list from the command line still wins */
        if (list->n == WS_CONFIG_MAX_LIST)
            return fail(err, errlen, "too many values for %s: %s", opt->name, "at most 16");
        list->items[list->n++] = ws_xstrndup(value, strlen(value));
        return 0;
    }
    }
    return WS_E_INVAL;
}

int ws_config_set_number(struct ws_config *cfg, const struct ws_option *opt, double value,
                         char *err, size_t errlen)
{
    if (opt->type != WS_OPT_INT && opt->type != WS_OPT_SECONDS)
        return ws_config_wrong_type(opt, "number", err, errlen);
    return set_number(cfg, opt, value, false, err, errlen);
}

int ws_config_set_bool(struct ws_config *cfg, const struct ws_option *opt, bool value, char *err,
                       size_t errlen)
{
    return set_bool(cfg, opt, value, false, err, errlen);
}

void ws_config_clear_list(struct ws_config *cfg, const struct ws_option *opt)
{
    if (!(cfg->cli_mask & (1ull << ws_config_index(opt))))
        list_clear(FIELD(cfg, opt, struct ws_string_list));
}

int ws_config_validate(const struct ws_config *cfg, char *err, size_t errlen)
{
    if (!cfg->tls_cert != !cfg->tls_key)
        return fail(err, errlen, "invalid configuration: %s %s", "tls_cert and tls_key",
                    "must be given together");
    if (cfg->max_buffered < 1024)
        return fail(err, errlen, "invalid value for %s: %s", "max_buffered", "at least 1024");
    for (size_t i = 0; i < cfg->trusted_proxies.n; i++) {
        struct ws_cidr net;
        if (ws_cidr_parse(cfg->trusted_proxies.items[i], &net) < 0)
            return fail(err, errlen,
                        "invalid value for %s: %s (want an address or CIDR such as "
                        "10.0.0.0/8 or ::1)",
                        "trusted_proxies", cfg->trusted_proxies.items[i]);
    }
    return 0;
}

static bool str_equal(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

bool ws_config_equal(const struct ws_config *a, const struct ws_config *b,
                     const struct ws_option *opt)
{
    switch (opt->type) {
    case WS_OPT_INT:
        return *FIELD(a, opt, int64_t) == *FIELD(b, opt, int64_t);
    case WS_OPT_SECONDS:
        return *FIELD(a, opt, double) == *FIELD(b, opt, double);
    case WS_OPT_BOOL:
        return *FIELD(a, opt, bool) == *FIELD(b, opt, bool);
    case WS_OPT_STRING:
    case WS_OPT_CHOICE:
        return str_equal(*FIELD(a, opt, char *), *FIELD(b, opt, char *));
    case WS_OPT_LIST: {
        const struct ws_string_list *x = FIELD(a, opt, struct ws_string_list);
        const struct ws_string_list *y = FIELD(b, opt, struct ws_string_list);
        if (x->n != y->n)
            return false;
        for (size_t i = 0; i < x->n; i++)
            if (!str_equal(x->items[i], y->items[i]))
                return false;
        return true;
    }
    }
    return false;
}

void ws_config_copy_option(struct ws_config *dst, const struct ws_config *src,
                           const struct ws_option *opt)
{
    switch (opt->type) {
    case WS_OPT_INT:
        *FIELD(dst, opt, int64_t) = *FIELD(src, opt, int64_t);
        break;
    case WS_OPT_SECONDS:
        *FIELD(dst, opt, double) = *FIELD(src, opt, double);
        break;
    case WS_OPT_BOOL:
        *FIELD(dst, opt, bool) = *FIELD(src, opt, bool);
        break;
    case WS_OPT_STRING:
    case WS_OPT_CHOICE:
        set_string(FIELD(dst, opt, char *), *FIELD(src, opt, char *));
        break;
    case WS_OPT_LIST: {
        struct ws_string_list *d = FIELD(dst, opt, struct ws_string_list);
        const struct ws_string_list *from = FIELD(src, opt, struct ws_string_list);
        list_clear(d);
        for (size_t i = 0; i < from->n; i++)
            d->items[d->n++] = ws_xstrndup(from->items[i], strlen(from->items[i]));
        break;
    }
    }
}

const char *ws_config_format(const struct ws_config *cfg, const struct ws_option *opt, char *out,
                             size_t cap)
{
    out[0] = 0;
    switch (opt->type) {
    case WS_OPT_INT:
        snprintf(out, cap, "%lld", (long long)*FIELD(cfg, opt, int64_t));
        break;
    case WS_OPT_SECONDS:
        snprintf(out, cap, "%g", *FIELD(cfg, opt, double));
        break;
    case WS_OPT_BOOL:
        snprintf(out, cap, "%s", *FIELD(cfg, opt, bool) ? "true" : "false");
        break;
    case WS_OPT_STRING:
    case WS_OPT_CHOICE: {
        const char *v = *FIELD(cfg, opt, char *);
        snprintf(out, cap, "%s", v ? v : "");
        break;
    }
    case WS_OPT_LIST: {
        const struct ws_string_list *list = FIELD(cfg, opt, struct ws_string_list);
        size_t len = 0;
        for (size_t i = 0; i < list->n && len < cap; i++) {
            int k = snprintf(out + len, cap - len, "%s%s", i ? "," : "", list->items[i]);
            len += k > 0 ? (size_t)k : 0;
        }
        break;
    }
    }
    return out;
}
