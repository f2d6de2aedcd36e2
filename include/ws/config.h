/* Server options: one descriptor table serves the command line (--kebab-case), the app's config
 * table (snake_case), --help and validation. Values are checked against their allowed range or
 * choices with a message naming the option. Knows nothing of Lua or argv layout. */
#ifndef WS_CONFIG_H
#define WS_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define WS_CONFIG_MAX_LIST 16

enum ws_option_type {
    WS_OPT_INT,     /* integer in [min, max] */
    WS_OPT_SECONDS, /* number of seconds (fractions allowed) in [min, max] */
    WS_OPT_BOOL,    /* true/false (command line: a flag, or --name=true|false) */
    WS_OPT_STRING,  /* free string (a path, a URL) */
    WS_OPT_CHOICE,  /* one of choices */
    WS_OPT_LIST,    /* list of strings; each use on the command line appends */
};

struct ws_string_list {
    char *items[WS_CONFIG_MAX_LIST];
    size_t n;
};

struct ws_config {
    struct ws_string_list listen;
    char *tls_cert;
    char *tls_key;
    char *static_dir;
    int64_t max_connections;
    int64_t max_connections_per_ip;
    int64_t max_header_size;
    int64_t max_body_size;
    struct ws_string_list allowed_origins;
    struct ws_string_list trusted_proxies;
    int64_t max_message_size;
    int64_t max_buffered;
    int64_t max_buffered_total;
    char *backpressure; /* "close" | "drop" */
    double handshake_timeout;
    double close_timeout;
    double shutdown_timeout;
    double ping_interval;
    double pong_timeout;
    double idle_timeout;
    double handler_timeout;
    double io_timeout;           /* a waiting call's default timeout (SPEC §4a) */
    int64_t max_pending_bytes;   /* messages queued behind a waiting handler; 0: 2 x max_message */
    int64_t http_max_concurrent; /* outbound HTTP requests in flight */
    int64_t lua_memory_limit;
    struct ws_string_list protocols;
    char *compression; /* "off" | "on" */
    int64_t compress_min_size;
    int64_t compression_window_bits;
    int64_t compression_mem_level;
    int64_t compression_level;
    bool compression_context_takeover;
    bool compression_client_no_context_takeover;
    int64_t fragment_size;
    bool metrics;
    char *metrics_listen;
    int64_t workers;
    char *redis;
    char *log_level;
    char *log_format;
    char *log_file; /* NULL: stderr */
    bool watch;
    char *pidfile;
    char *user;
    uint64_t set_mask; /* bit i: option i was set explicitly */
    uint64_t cli_mask; /* bit i: option i came from the command line (wins over the app) */
};

struct ws_option {
    const char *name; /* snake_case; the command line uses it with '-' for '_' */
    enum ws_option_type type;
    size_t offset;
    double min, max;
    const char *const *choices; /* NULL-terminated, for WS_OPT_CHOICE */
    bool live;                  /* can change on reload without a restart */
    const char *arg;            /* metavariable for --help */
    const char *help;
};

/* The option table, terminated by an entry with name NULL. */
extern const struct ws_option ws_options[];

/* Fills cfg with the defaults of SPEC §2. Free with ws_config_free. */
void ws_config_init(struct ws_config *cfg);

/* Frees the strings cfg owns; cfg may be initialised again. */
void ws_config_free(struct ws_config *cfg);

/* Copies src into dst (deep); dst must be freed or fresh. */
void ws_config_copy(struct ws_config *dst, const struct ws_config *src);

/* The option named name (snake_case, or kebab-case when kebab), or NULL. */
const struct ws_option *ws_config_find(const char *name, bool kebab);

/* Sets opt from text (numbers parsed, "true"/"false" for booleans; lists append). from_cli marks
 * the option as set on the command line; a later app setting of a CLI option is ignored.
 * listen addresses are checked (form, port 1-65535) and static must name a readable folder.
 * Returns 0, or WS_E_INVAL with a message naming the option and the allowed values in err. */
int ws_config_set(struct ws_config *cfg, const struct ws_option *opt, const char *value,
                  bool from_cli, char *err, size_t errlen);

/* Typed setters for the app's config table; same checks and messages as ws_config_set. */
int ws_config_set_number(struct ws_config *cfg, const struct ws_option *opt, double value,
                         char *err, size_t errlen);
int ws_config_set_bool(struct ws_config *cfg, const struct ws_option *opt, bool value, char *err,
                       size_t errlen);

/* What opt accepts, for messages: "a whole number from 1 to 10000000", "one of off, on", ... */
void ws_config_describe(const struct ws_option *opt, char *out, size_t cap);

/* Fills err with "invalid value for NAME: must be <what opt accepts> (got a <got>)" and returns
 * WS_E_INVAL: a value of the wrong type in the app's config table (got: "string", "table"...). */
int ws_config_wrong_type(const struct ws_option *opt, const char *got, char *err, size_t errlen);

/* Empties a list option before an app's list replaces it (no-op when it came from the CLI). */
void ws_config_clear_list(struct ws_config *cfg, const struct ws_option *opt);

/* Checks rules between options (tls_cert needs tls_key, ...). 0 or WS_E_INVAL with err. */
int ws_config_validate(const struct ws_config *cfg, char *err, size_t errlen);

/* Copies opt's value from src into dst (deep), keeping dst's other options. */
void ws_config_copy_option(struct ws_config *dst, const struct ws_config *src,
                           const struct ws_option *opt);

/* True when a and b hold the same value for opt. */
bool ws_config_equal(const struct ws_config *a, const struct ws_config *b,
                     const struct ws_option *opt);

/* Writes opt's value in cfg as text into out: "10000", "0.5", "true", "close", "a,b"; "" when a
 * string or list is unset. Cut to cap bytes. Returns out. */
const char *ws_config_format(const struct ws_config *cfg, const struct ws_option *opt, char *out,
                             size_t cap);

/* Index of opt in ws_options. */
size_t ws_config_index(const struct ws_option *opt);

#endif
