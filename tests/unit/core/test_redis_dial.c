/* Unit tests for reaching a Redis (redis_dial.c): URLs parsed into addresses, and their names.
 * Connecting: test_redis_client.c and the integration tests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/err.h"
#include "ws/redis_dial.h"

static void test_parse_url(void **state)
{
    (void)state;
    struct ws_redis_addr a;
    assert_int_equal(ws_redis_parse_url("redis://127.0.0.1:6380/2", &a), 0);
    assert_string_equal(a.host, "127.0.0.1");
    assert_int_equal(a.port, 6380);
    assert_int_equal(a.db, 2);
    assert_string_equal(a.password, "");
    /* the last '@' ends the password, the first ':' starts it */
    assert_int_equal(ws_redis_parse_url("redis://:p@ss:w@h", &a), 0);
    assert_string_equal(a.user, "");
    assert_string_equal(a.password, "p@ss:w");
    assert_string_equal(a.host, "h");
    assert_int_equal(a.port, 6379);
    assert_int_equal(ws_redis_parse_url("redis://app:pw@h:1/", &a), 0);
    assert_string_equal(a.user, "app");
    assert_int_equal(a.db, 0);
    assert_int_equal(ws_redis_parse_url("localhost:7000", &a), 0);
    assert_int_equal(a.port, 7000);
    assert_int_equal(ws_redis_parse_url("unix:/run/redis.sock?db=4", &a), 0);
    assert_string_equal(a.path, "/run/redis.sock");
    assert_int_equal(a.db, 4);
    assert_string_equal(a.host, "");
    assert_int_equal(ws_redis_parse_url("unix:///tmp/r.sock", &a), 0);
    assert_string_equal(a.path, "/tmp/r.sock");
    char name[300];
    ws_redis_addr_name(&a, name, sizeof(name));
    assert_string_equal(name, "/tmp/r.sock");
    static const char *const bad[] = {
        "redis://",         "redis://h:0",   "redis://h:65536", "redis://h:x", "redis://h:1/x",
        "redis://h/99999a", "redis://u@h",   "unix:",           "unix:rel",    "unix:/s?db=",
        "unix:/s?x=1",      "redis://:1234", "redis://h:-1",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(ws_redis_parse_url(bad[i], &a), WS_E_INVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_url),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
