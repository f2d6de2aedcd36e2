/* Unit tests for server options (src/core/config.c): the defaults, lookup by snake and kebab name,
 * each kind of value at and past its limits with the message naming the option and its range,
 * the command line winning over the app (lists included), deep copies, per-option copy and
 * comparison, the rules between options, listen addresses checked when set (port 1-65535), the
 * static folder, and messages naming what a value of the wrong type should be. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/config.h"
#include "ws/err.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct ws_config cfg;
static char err[512];

static int setup(void **state)
{
    (void)state;
    ws_config_init(&cfg);
    err[0] = '\0';
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ws_config_free(&cfg);
    return 0;
}

static const struct ws_option *opt(const char *name)
{
    const struct ws_option *o = ws_config_find(name, false);
    assert_non_null(o);
    return o;
}

static int set(const char *name, const char *value)
{
    err[0] = '\0';
    return ws_config_set(&cfg, opt(name), value, false, err, sizeof(err));
}

static int set_cli(const char *name, const char *value)
{
    err[0] = '\0';
    return ws_config_set(&cfg, opt(name), value, true, err, sizeof(err));
}

static uint64_t bit(const char *name)
{
    return 1ull << ws_config_index(opt(name));
}

/* Refused with exactly this message, and nothing marked as set. */
static void refused(const char *name, const char *value, const char *message)
{
    uint64_t mask = cfg.set_mask;
    assert_int_equal(set(name, value), WS_E_INVAL);
    assert_string_equal(err, message);
    assert_true(cfg.set_mask == mask);
}

static void test_defaults(void **state)
{
    (void)state;
    assert_int_equal(cfg.listen.n, 0);
    assert_int_equal(cfg.protocols.n, 0);
    assert_null(cfg.tls_cert);
    assert_null(cfg.static_dir);
    assert_int_equal(cfg.max_connections, 10000);
    assert_int_equal(cfg.max_connections_per_ip, 0);
    assert_int_equal(cfg.max_header_size, 8192);
    assert_int_equal(cfg.max_message_size, 1048576);
    assert_int_equal(cfg.max_buffered, 1048576);
    assert_int_equal(cfg.max_buffered_total, 268435456);
    assert_string_equal(cfg.backpressure, "close");
    assert_true(cfg.handshake_timeout == 10 && cfg.close_timeout == 5);
    assert_true(cfg.ping_interval == 30 && cfg.pong_timeout == 10 && cfg.idle_timeout == 0);
    assert_true(cfg.handler_timeout == 1 && cfg.shutdown_timeout == 10);
    assert_int_equal(cfg.lua_memory_limit, 536870912);
    assert_string_equal(cfg.compression, "off");
    assert_int_equal(cfg.compression_window_bits, 15);
    assert_false(cfg.metrics);
    assert_int_equal(cfg.workers, 1);
    assert_string_equal(cfg.log_level, "info");
    assert_string_equal(cfg.log_format, "text");
    assert_true(cfg.set_mask == 0 && cfg.cli_mask == 0);
    assert_int_equal(ws_config_validate(&cfg, err, sizeof(err)), 0);

    /* every default lies inside its own range, and every choice default is a choice */
    size_t n = 0;
    for (const struct ws_option *o = ws_options; o->name; o++, n++) {
        if (o->type == WS_OPT_INT) {
            int64_t v = *(int64_t *)((char *)&cfg + o->offset);
            assert_true(v >= o->min && v <= o->max);
        } else if (o->type == WS_OPT_SECONDS) {
            double v = *(double *)((char *)&cfg + o->offset);
            assert_true(v >= o->min && v <= o->max);
        } else if (o->type == WS_OPT_CHOICE) {
            const char *v = *(char **)((char *)&cfg + o->offset);
            bool found = false;
            for (const char *const *c = o->choices; *c; c++)
                found |= strcmp(*c, v) == 0;
            assert_true(found);
        }
    }
    assert_true(n <= 64); /* set_mask and cli_mask have a bit per option */
}

static void test_find(void **state)
{
    (void)state;
    for (const struct ws_option *o = ws_options; o->name; o++) {
        assert_ptr_equal(ws_config_find(o->name, false), o);
        char kebab[64];
        snprintf(kebab, sizeof(kebab), "%s", o->name);
        for (char *p = kebab; *p; p++)
            if (*p == '_')
                *p = '-';
        assert_ptr_equal(ws_config_find(kebab, true), o);
        assert_int_equal(ws_config_index(o), (size_t)(o - ws_options));
    }
    assert_null(ws_config_find("max-connections", false)); /* the app table is snake_case */
    assert_null(ws_config_find("max_connections", true));  /* the command line is kebab-case */
    assert_null(ws_config_find("max", false));             /* no prefixes */
    assert_null(ws_config_find("max_connectionsx", false));
    assert_null(ws_config_find("", false));
    assert_null(ws_config_find("MAX_CONNECTIONS", false));
}

static void test_whole_numbers(void **state)
{
    (void)state;
    assert_int_equal(set("max_header_size", "256"), 0); /* the minimum */
    assert_int_equal(cfg.max_header_size, 256);
    assert_int_equal(set("max_header_size", "1048576"), 0); /* the maximum */
    assert_int_equal(cfg.max_header_size, 1048576);
    assert_true(cfg.set_mask & bit("max_header_size"));

    const char *msg = "invalid value for max_header_size: must be a whole number from 256 to "
                      "1048576";
    refused("max_header_size", "255", msg);
    refused("max_header_size", "1048577", msg);
    refused("max_header_size", "1024.5", msg);
    refused("max_header_size", "", msg);
    refused("max_header_size", "12k", msg);
    refused("max_header_size", "1024 ", msg);
    refused("max_header_size", "nan", msg);
    refused("max_header_size", "inf", msg);
    refused("max_header_size", "-inf", msg);
    refused("max_header_size", "1e400", msg);
    assert_int_equal(cfg.max_header_size, 1048576); /* unchanged by the refusals */

    /* sizes up to 4 GiB and 1 TiB are exact in 64 bits */
    assert_int_equal(set("max_message_size", "4294967296"), 0);
    assert_true(cfg.max_message_size == 4294967296ll);
    refused("max_message_size", "4294967297",
            "invalid value for max_message_size: must be a whole number from 1 to 4294967296");
    assert_int_equal(set("max_buffered_total", "1099511627776"), 0);
    assert_true(cfg.max_buffered_total == 1099511627776ll);
    refused("max_buffered_total", "1e300",
            "invalid value for max_buffered_total: must be a whole number from 65536 to "
            "1099511627776");
    refused("max_connections_per_ip", "-1",
            "invalid value for max_connections_per_ip: must be a whole number from 0 to "
            "10000000");
    assert_int_equal(set("max_connections_per_ip", "0"), 0);

    /* workers also takes "auto" (0: one per CPU); no other number does */
    assert_int_equal(set("workers", "auto"), 0);
    assert_int_equal(cfg.workers, 0);
    refused("max_connections", "auto",
            "invalid value for max_connections: must be a whole number from 1 to 10000000");
}

static void test_seconds(void **state)
{
    (void)state;
    assert_int_equal(set("close_timeout", "0.25"), 0);
    assert_true(cfg.close_timeout == 0.25);
    assert_int_equal(set("handler_timeout", "0.001"), 0); /* the minimum */
    assert_true(cfg.handler_timeout == 0.001);
    assert_int_equal(set("handler_timeout", "1e-2"), 0);
    assert_true(cfg.handler_timeout == 0.01);
    assert_int_equal(set("ping_interval", "0"), 0); /* 0: off */
    assert_true(cfg.ping_interval == 0);
    assert_int_equal(set("idle_timeout", "86400"), 0);

    refused("handler_timeout", "0.0009",
            "invalid value for handler_timeout: must be a number of seconds from 0.001 to 3600");
    refused("handler_timeout", "3600.5",
            "invalid value for handler_timeout: must be a number of seconds from 0.001 to 3600");
    refused("close_timeout", "0",
            "invalid value for close_timeout: must be a number of seconds from 0.01 to 86400");
    refused("idle_timeout", "86400.001",
            "invalid value for idle_timeout: must be a number of seconds from 0 to 86400");
    refused("idle_timeout", "5s",
            "invalid value for idle_timeout: must be a number of seconds from 0 to 86400");
    refused("idle_timeout", "nan",
            "invalid value for idle_timeout: must be a number of seconds from 0 to 86400");
    assert_true(cfg.handler_timeout == 0.01);

    /* the app's typed setter: same checks, fractions kept for seconds, refused for sizes */
    assert_int_equal(ws_config_set_number(&cfg, opt("pong_timeout"), 2.5, err, sizeof(err)), 0);
    assert_true(cfg.pong_timeout == 2.5);
    assert_int_equal(ws_config_set_number(&cfg, opt("max_connections"), 2.5, err, sizeof(err)),
                     WS_E_INVAL);
    assert_string_equal(
        err, "invalid value for max_connections: must be a whole number from 1 to 10000000");
    assert_int_equal(ws_config_set_number(&cfg, opt("max_connections"), NAN, err, sizeof(err)),
                     WS_E_INVAL);
    assert_int_equal(ws_config_set_number(&cfg, opt("max_connections"), 77, err, sizeof(err)), 0);
    assert_int_equal(cfg.max_connections, 77);
}

static void test_choices(void **state)
{
    (void)state;
    assert_int_equal(set("backpressure", "drop"), 0);
    assert_string_equal(cfg.backpressure, "drop");
    refused("backpressure", "Drop", "invalid value for backpressure: must be one of close, drop");
    refused("backpressure", "", "invalid value for backpressure: must be one of close, drop");
    refused("log_level", "trace",
            "invalid value for log_level: must be one of debug, info, warn, error");
    assert_string_equal(cfg.backpressure, "drop");
    assert_int_equal(set("log_format", "json"), 0);
    assert_string_equal(cfg.log_format, "json");
    assert_int_equal(ws_config_set_number(&cfg, opt("log_format"), 1, err, sizeof(err)),
                     WS_E_INVAL);
    assert_string_equal(err,
                        "invalid value for log_format: must be one of text, json (got a number)");
}

static void test_booleans(void **state)
{
    (void)state;
    assert_int_equal(set("metrics", "true"), 0);
    assert_true(cfg.metrics);
    assert_int_equal(set("metrics", "0"), 0);
    assert_false(cfg.metrics);
    assert_int_equal(set("metrics", "1"), 0);
    assert_true(cfg.metrics);
    assert_int_equal(set("metrics", "false"), 0);
    assert_false(cfg.metrics);
    refused("metrics", "yes", "invalid value for metrics: must be true or false");
    refused("metrics", "TRUE", "invalid value for metrics: must be true or false");
    refused("metrics", "", "invalid value for metrics: must be true or false");
    assert_int_equal(ws_config_set_bool(&cfg, opt("watch"), true, err, sizeof(err)), 0);
    assert_true(cfg.watch);
    assert_int_equal(ws_config_set_bool(&cfg, opt("max_connections"), true, err, sizeof(err)),
                     WS_E_INVAL);
    assert_string_equal(err, "invalid value for max_connections: must be a whole number from 1 to "
                             "10000000 (got a boolean)");
    assert_int_equal(cfg.max_connections, 10000);
}

static void test_strings_and_lists(void **state)
{
    (void)state;
    assert_int_equal(set("static", "/"), 0);
    assert_int_equal(set("static", "/tmp"), 0); /* replaces (the old copy freed) */
    assert_string_equal(cfg.static_dir, "/tmp");
    refused("static", "", "invalid value for static: must not be empty");
    assert_string_equal(cfg.static_dir, "/tmp");

    char addr[32];
    for (int i = 0; i < WS_CONFIG_MAX_LIST; i++) {
        snprintf(addr, sizeof(addr), "127.0.0.1:%d", 9000 + i);
        assert_int_equal(set("listen", addr), 0); /* each use appends */
    }
    assert_int_equal(cfg.listen.n, WS_CONFIG_MAX_LIST);
    assert_string_equal(cfg.listen.items[0], "127.0.0.1:9000");
    assert_string_equal(cfg.listen.items[15], "127.0.0.1:9015");
    refused("listen", "127.0.0.1:1", "too many values for listen: at most 16");
    assert_int_equal(cfg.listen.n, WS_CONFIG_MAX_LIST);
    refused("protocols", "", "invalid value for protocols: must not be empty");

    ws_config_clear_list(&cfg, opt("listen")); /* set by the app: cleared */
    assert_int_equal(cfg.listen.n, 0);
    assert_int_equal(set("listen", "[::1]:80"), 0);
    assert_int_equal(cfg.listen.n, 1);
    assert_string_equal(cfg.listen.items[0], "[::1]:80");
}

/* The command line wins: a later app setting of the same option is accepted and ignored. */
static void test_command_line_wins(void **state)
{
    (void)state;
    assert_int_equal(set("max_connections", "5"), 0); /* app first */
    assert_int_equal(set_cli("max_connections", "50"), 0);
    assert_int_equal(cfg.max_connections, 50);
    assert_int_equal(set("max_connections", "7"), 0);
    assert_int_equal(cfg.max_connections, 50);
    assert_int_equal(ws_config_set_number(&cfg, opt("max_connections"), 8, err, sizeof(err)), 0);
    assert_int_equal(cfg.max_connections, 50);
    assert_true(cfg.cli_mask & bit("max_connections"));
    assert_true(cfg.set_mask & bit("max_connections"));
    assert_false(cfg.cli_mask & bit("max_header_size"));
    /* an invalid app value is still reported */
    refused("max_connections", "0",
            "invalid value for max_connections: must be a whole number from 1 to 10000000");

    assert_int_equal(set_cli("metrics", "true"), 0);
    assert_int_equal(ws_config_set_bool(&cfg, opt("metrics"), false, err, sizeof(err)), 0);
    assert_true(cfg.metrics);
    assert_int_equal(set_cli("log_level", "debug"), 0);
    assert_int_equal(set("log_level", "error"), 0);
    assert_string_equal(cfg.log_level, "debug");

    /* lists: the app's list neither clears nor extends the command line's */
    assert_int_equal(set_cli("protocols", "chat"), 0);
    ws_config_clear_list(&cfg, opt("protocols"));
    assert_int_equal(set("protocols", "other"), 0);
    assert_int_equal(cfg.protocols.n, 1);
    assert_string_equal(cfg.protocols.items[0], "chat");
}

/* Sixteen listeners on the command line (the most there can be) and a listen list in the app:
 * the app's setting is ignored like any other, not refused as one too many. */
static void test_full_command_line_list_ignores_app(void **state)
{
    (void)state;
    char addr[32];
    for (int i = 0; i < WS_CONFIG_MAX_LIST; i++) {
        snprintf(addr, sizeof(addr), "0.0.0.0:%d", 8000 + i);
        assert_int_equal(set_cli("listen", addr), 0);
    }
    ws_config_clear_list(&cfg, opt("listen"));
    assert_int_equal(set("listen", "0.0.0.0:9999"), 0);
    assert_int_equal(cfg.listen.n, WS_CONFIG_MAX_LIST);
    assert_string_equal(cfg.listen.items[15], "0.0.0.0:8015");
    /* the command line itself still cannot pass the limit */
    assert_int_equal(set_cli("listen", "0.0.0.0:9999"), WS_E_INVAL);
    assert_string_equal(err, "too many values for listen: at most 16");
}

static void test_copy_equal_and_copy_option(void **state)
{
    (void)state;
    assert_int_equal(set("tls_cert", "/c.pem"), 0);
    assert_int_equal(set("tls_key", "/k.pem"), 0);
    assert_int_equal(set("listen", "a:1"), 0);
    assert_int_equal(set("listen", "b:2"), 0);
    assert_int_equal(set("idle_timeout", "1.5"), 0);
    assert_int_equal(set_cli("metrics", "true"), 0);

    struct ws_config copy;
    ws_config_copy(&copy, &cfg);
    for (const struct ws_option *o = ws_options; o->name; o++)
        assert_true(ws_config_equal(&copy, &cfg, o));
    assert_true(copy.set_mask == cfg.set_mask && copy.cli_mask == cfg.cli_mask);
    /* deep: no string is shared */
    assert_ptr_not_equal(copy.tls_cert, cfg.tls_cert);
    assert_ptr_not_equal(copy.listen.items[1], cfg.listen.items[1]);
    assert_ptr_not_equal(copy.backpressure, cfg.backpressure);

    /* changing the original leaves the copy alone, and equal() sees the difference */
    assert_int_equal(set("listen", "c:3"), 0);
    assert_int_equal(set("tls_cert", "/other.pem"), 0);
    assert_int_equal(set("idle_timeout", "2"), 0);
    assert_int_equal(set("backpressure", "drop"), 0);
    assert_false(ws_config_equal(&copy, &cfg, opt("listen")));
    assert_false(ws_config_equal(&copy, &cfg, opt("tls_cert")));
    assert_false(ws_config_equal(&copy, &cfg, opt("idle_timeout")));
    assert_false(ws_config_equal(&copy, &cfg, opt("backpressure")));
    assert_true(ws_config_equal(&copy, &cfg, opt("tls_key")));
    assert_true(ws_config_equal(&copy, &cfg, opt("metrics")));
    assert_true(ws_config_equal(&copy, &cfg, opt("static"))); /* NULL and NULL */
    assert_int_equal(copy.listen.n, 2);
    assert_string_equal(copy.tls_cert, "/c.pem");

    /* copy_option takes one option over, replacing (not appending to) a list */
    ws_config_copy_option(&copy, &cfg, opt("listen"));
    ws_config_copy_option(&copy, &cfg, opt("tls_cert"));
    ws_config_copy_option(&copy, &cfg, opt("idle_timeout"));
    assert_true(ws_config_equal(&copy, &cfg, opt("listen")));
    assert_int_equal(copy.listen.n, 3);
    assert_true(ws_config_equal(&copy, &cfg, opt("tls_cert")));
    assert_true(copy.idle_timeout == 2);
    assert_false(ws_config_equal(&copy, &cfg, opt("backpressure")));
    ws_config_copy_option(&copy, &cfg, opt("static")); /* NULL copies as NULL */
    assert_null(copy.static_dir);

    /* the copy outlives the original */
    ws_config_free(&cfg);
    assert_string_equal(copy.listen.items[2], "c:3");
    assert_string_equal(copy.tls_cert, "/other.pem");
    ws_config_free(&copy);
    ws_config_init(&cfg); /* freed configs can be initialised again (teardown frees it) */
}

static void test_validate(void **state)
{
    (void)state;
    assert_int_equal(set("tls_cert", "/c.pem"), 0);
    assert_int_equal(ws_config_validate(&cfg, err, sizeof(err)), WS_E_INVAL);
    assert_string_equal(err, "invalid configuration: tls_cert and tls_key must be given together");
    assert_int_equal(set("tls_key", "/k.pem"), 0);
    assert_int_equal(ws_config_validate(&cfg, err, sizeof(err)), 0);

    struct ws_config other;
    ws_config_init(&other);
    assert_int_equal(ws_config_set(&other, opt("tls_key"), "/k.pem", true, err, sizeof(err)), 0);
    assert_int_equal(ws_config_validate(&other, err, sizeof(err)), WS_E_INVAL);
    ws_config_free(&other);

    /* a short message buffer gets a cut, terminated message */
    char small[12];
    memset(small, 'x', sizeof(small));
    assert_int_equal(ws_config_set(&cfg, opt("backpressure"), "nope", false, small, sizeof(small)),
                     WS_E_INVAL);
    assert_string_equal(small, "invalid val");
}

static void assert_refused(const char *name, const char *value, const char *text)
{
    assert_int_not_equal(set_cli(name, value), 0);
    if (!strstr(err, text))
        fail_msg("%s=%s: \"%s\" does not say \"%s\"", name, value, err, text);
    if (!strstr(err, name))
        fail_msg("%s=%s: \"%s\" does not name the option", name, value, err);
}

static void test_listen_ports(void **state)
{
    (void)state;
    const char *good[] = {"127.0.0.1:1",   "0.0.0.0:65535",     ":8080",           "[::1]:443",
                          "tls:[::]:8443", "unix:/tmp/ws.sock", "tls:unix:/tmp/x", "localhost:80"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
        if (set_cli("listen", good[i]) != 0)
            fail_msg("listen %s refused: %s", good[i], err);
    const char *bad_port[] = {":99999", ":65536",  ":0",         "127.0.0.1:", ":-1",
                              ":80x",   ":123456", "[::1]:http", ":+80"};
    for (size_t i = 0; i < sizeof(bad_port) / sizeof(bad_port[0]); i++)
        assert_refused("listen", bad_port[i], "the port must be a number from 1 to 65535");
    const char *bad_form[] = {"localhost", "[::1]", "[]:80", "tls:"};
    for (size_t i = 0; i < sizeof(bad_form) / sizeof(bad_form[0]); i++)
        assert_refused("listen", bad_form[i], "expected host:port");
    assert_refused("listen", "unix:", "unix socket path");
}

static void test_static_folder(void **state)
{
    (void)state;
    char dir[] = "/tmp/ws-config-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(set_cli("static", dir), 0);
    assert_string_equal(cfg.static_dir, dir);
    assert_refused("static", "/nonexistent/ws-config", "must be a readable folder");
    char file[64];
    snprintf(file, sizeof(file), "%s/file", dir);
    FILE *f = fopen(file, "w");
    assert_non_null(f);
    fclose(f);
    assert_refused("static", file, "not a folder");
    unlink(file);
    rmdir(dir);
    assert_refused("static", dir, "must be a readable folder");
}

static void test_messages_name_what_is_allowed(void **state)
{
    (void)state;
    assert_refused("compression", "yes", "must be one of off, on");
    assert_refused("log_level", "loud", "must be one of debug, info, warn, error");
    assert_refused("max_connections", "0", "must be a whole number from 1 to 10000000");
    assert_refused("ping_interval", "20s", "must be a number of seconds from 0 to 86400");
    assert_refused("workers", "many", "or \"auto\"");
    assert_refused("metrics", "maybe", "must be true or false");

    const struct ws_option *compression = ws_config_find("compression", false);
    assert_int_not_equal(ws_config_set_bool(&cfg, compression, true, err, sizeof(err)), 0);
    assert_string_equal(err,
                        "invalid value for compression: must be one of off, on (got a boolean)");
    const struct ws_option *ping = ws_config_find("ping_interval", false);
    assert_int_not_equal(ws_config_wrong_type(ping, "string", err, sizeof(err)), 0);
    assert_string_equal(err, "invalid value for ping_interval: must be a number of seconds from 0 "
                             "to 86400 (got a string)");
    const struct ws_option *listen = ws_config_find("listen", false);
    assert_int_not_equal(ws_config_set_number(&cfg, listen, 8080, err, sizeof(err)), 0);
    assert_string_equal(
        err, "invalid value for listen: must be a string or a list of strings (got a number)");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
        cmocka_unit_test_setup_teardown(test_find, setup, teardown),
        cmocka_unit_test_setup_teardown(test_whole_numbers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_seconds, setup, teardown),
        cmocka_unit_test_setup_teardown(test_choices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_booleans, setup, teardown),
        cmocka_unit_test_setup_teardown(test_strings_and_lists, setup, teardown),
        cmocka_unit_test_setup_teardown(test_command_line_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_full_command_line_list_ignores_app, setup, teardown),
        cmocka_unit_test_setup_teardown(test_copy_equal_and_copy_option, setup, teardown),
        cmocka_unit_test_setup_teardown(test_validate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listen_ports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_static_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_messages_name_what_is_allowed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
