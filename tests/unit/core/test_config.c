/* Unit tests for the option table (src/core/config.c): listen addresses checked when they are set
 * (port 1-65535, the forms the server binds), the static folder, and messages that name the
 * option with what it accepts, for a bad value and for a value of the wrong type. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/config.h"

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
    err[0] = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ws_config_free(&cfg);
    return 0;
}

static int set(const char *name, const char *value)
{
    const struct ws_option *opt = ws_config_find(name, false);
    assert_non_null(opt);
    err[0] = 0;
    return ws_config_set(&cfg, opt, value, true, err, sizeof(err));
}

static void assert_refused(const char *name, const char *value, const char *text)
{
    assert_int_not_equal(set(name, value), 0);
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
        if (set("listen", good[i]) != 0)
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
    assert_int_equal(set("static", dir), 0);
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
        cmocka_unit_test_setup_teardown(test_listen_ports, setup, teardown),
        cmocka_unit_test_setup_teardown(test_static_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_messages_name_what_is_allowed, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
