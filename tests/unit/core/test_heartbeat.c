/* Unit tests for the timeout table (src/core/heartbeat.c): the next deadline of each phase
 * (handshake, open with ping / outstanding pong / idle, closing), nothing armed, the order in
 * which due rules win (pong, idle, ping), exact boundaries, and each rule's action, code and
 * reason. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/config.h"
#include "ws/heartbeat.h"

#include <math.h>
#include <string.h>

#define T0 1000.0 /* a loop clock well past 0 */

static struct ws_config cfg;
static struct ws_heartbeat_clocks clk;

static int setup(void **state)
{
    (void)state;
    ws_config_init(&cfg);
    cfg.handshake_timeout = 10;
    cfg.close_timeout = 5;
    cfg.ping_interval = 30;
    cfg.pong_timeout = 10;
    cfg.idle_timeout = 0;
    memset(&clk, 0, sizeof(clk));
    clk.started = clk.last_read = clk.last_message = T0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    ws_config_free(&cfg);
    return 0;
}

static double next(enum ws_heartbeat_phase phase)
{
    return ws_heartbeat_next(phase, &clk, &cfg);
}

static const struct ws_heartbeat_rule *due(enum ws_heartbeat_phase phase, double now)
{
    return ws_heartbeat_due(phase, &clk, &cfg, now);
}

/* The rule due at now, checked against the expected row. */
static void assert_rule(const struct ws_heartbeat_rule *r, enum ws_heartbeat_phase phase,
                        enum ws_heartbeat_action action, int code, const char *reason)
{
    assert_non_null(r);
    assert_int_equal(r->phase, phase);
    assert_int_equal(r->action, action);
    assert_int_equal(r->code, code);
    if (reason)
        assert_string_equal(r->reason, reason);
    else
        assert_null(r->reason);
    assert_non_null(r->due);
}

/* The largest double below x: "a hair before". */
static double before(double x)
{
    return nextafter(x, 0);
}

static void test_handshake(void **state)
{
    (void)state;
    assert_true(next(WS_HEARTBEAT_HANDSHAKE) == T0 + 10);
    assert_null(due(WS_HEARTBEAT_HANDSHAKE, before(T0 + 10)));
    const struct ws_heartbeat_rule *r = due(WS_HEARTBEAT_HANDSHAKE, T0 + 10);
    assert_rule(r, WS_HEARTBEAT_HANDSHAKE, WS_HEARTBEAT_DROP, 1006, "handshake timeout");
    assert_string_equal(r->event, "handshake_timeout");
    assert_ptr_equal(due(WS_HEARTBEAT_HANDSHAKE, T0 + 1e6), r);
    assert_true(r->due(&clk, &cfg) == T0 + 10);

    /* the handshake deadline ignores reads and the open-phase options */
    clk.last_read = T0 + 9;
    cfg.ping_interval = 1;
    cfg.idle_timeout = 1;
    assert_true(next(WS_HEARTBEAT_HANDSHAKE) == T0 + 10);
    assert_null(due(WS_HEARTBEAT_HANDSHAKE, T0 + 9.5));

    cfg.handshake_timeout = 0.25;
    assert_true(next(WS_HEARTBEAT_HANDSHAKE) == T0 + 0.25);
}

static void test_closing(void **state)
{
    (void)state;
    clk.closing_since = T0 + 50;
    assert_true(next(WS_HEARTBEAT_CLOSING) == T0 + 55);
    assert_null(due(WS_HEARTBEAT_CLOSING, before(T0 + 55)));
    const struct ws_heartbeat_rule *r = due(WS_HEARTBEAT_CLOSING, T0 + 55);
    assert_rule(r, WS_HEARTBEAT_CLOSING, WS_HEARTBEAT_DROP, 1006, "close timeout");
    assert_null(r->event);

    /* no ping, pong or idle rule while closing, however late */
    clk.ping_sent = T0;
    cfg.idle_timeout = 1;
    assert_true(next(WS_HEARTBEAT_CLOSING) == T0 + 55);
    assert_null(due(WS_HEARTBEAT_CLOSING, T0 + 54));
}

static void test_open_ping(void **state)
{
    (void)state;
    /* silent for ping_interval since the last read: ping */
    clk.last_read = T0 + 7;
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 + 37);
    assert_null(due(WS_HEARTBEAT_OPEN, before(T0 + 37)));
    const struct ws_heartbeat_rule *r = due(WS_HEARTBEAT_OPEN, T0 + 37);
    assert_rule(r, WS_HEARTBEAT_OPEN, WS_HEARTBEAT_PING, 0, NULL);
    assert_null(r->event);

    /* the open phase does not use the handshake deadline */
    assert_null(due(WS_HEARTBEAT_OPEN, T0 + 20));
}

static void test_open_pong_outstanding(void **state)
{
    (void)state;
    clk.ping_sent = T0 + 30;
    /* no second ping while one is outstanding: the pong deadline is next */
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 + 40);
    assert_null(due(WS_HEARTBEAT_OPEN, before(T0 + 40)));
    const struct ws_heartbeat_rule *r = due(WS_HEARTBEAT_OPEN, T0 + 40);
    assert_rule(r, WS_HEARTBEAT_OPEN, WS_HEARTBEAT_CLOSE, 1001, "pong timeout");
    assert_string_equal(r->event, "pong_timeout");

    /* the pong is awaited even with pings turned off since */
    cfg.ping_interval = 0;
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 + 40);
    assert_ptr_equal(due(WS_HEARTBEAT_OPEN, T0 + 40), r);

    /* the pong came (ping_sent cleared): back to the ping schedule */
    cfg.ping_interval = 30;
    clk.ping_sent = 0;
    clk.last_read = T0 + 39;
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 + 69);
    assert_null(due(WS_HEARTBEAT_OPEN, T0 + 40));
}

static void test_open_idle(void **state)
{
    (void)state;
    cfg.ping_interval = 0;
    cfg.idle_timeout = 60;
    clk.last_message = T0 + 5;
    clk.last_read = T0 + 50; /* pongs and pings do not count as activity */
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 + 65);
    assert_null(due(WS_HEARTBEAT_OPEN, before(T0 + 65)));
    const struct ws_heartbeat_rule *r = due(WS_HEARTBEAT_OPEN, T0 + 65);
    assert_rule(r, WS_HEARTBEAT_OPEN, WS_HEARTBEAT_CLOSE, 1001, "idle timeout");
    assert_null(r->event);

    /* with pings on too, the earlier deadline is next */
    cfg.ping_interval = 30;
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 + 65); /* ping at T0 + 80 */
    cfg.ping_interval = 10;
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 + 60); /* idle at T0 + 65 */
}

static void test_nothing_armed(void **state)
{
    (void)state;
    cfg.ping_interval = 0;
    cfg.idle_timeout = 0;
    assert_true(next(WS_HEARTBEAT_OPEN) == 0);
    assert_null(due(WS_HEARTBEAT_OPEN, T0 + 1e9));
    /* the other phases are always armed */
    assert_true(next(WS_HEARTBEAT_HANDSHAKE) > 0);
    clk.closing_since = T0;
    assert_true(next(WS_HEARTBEAT_CLOSING) > 0);
}

static void test_order_pong_idle_ping(void **state)
{
    (void)state;
    /* everything overdue at once: pong wins, then idle, then ping */
    cfg.ping_interval = 1;
    cfg.idle_timeout = 1;
    clk.ping_sent = T0 + 1;
    double late = T0 + 1000;
    const struct ws_heartbeat_rule *r = due(WS_HEARTBEAT_OPEN, late);
    assert_rule(r, WS_HEARTBEAT_OPEN, WS_HEARTBEAT_CLOSE, 1001, "pong timeout");

    clk.ping_sent = 0;
    r = due(WS_HEARTBEAT_OPEN, late);
    assert_rule(r, WS_HEARTBEAT_OPEN, WS_HEARTBEAT_CLOSE, 1001, "idle timeout");

    cfg.idle_timeout = 0;
    r = due(WS_HEARTBEAT_OPEN, late);
    assert_rule(r, WS_HEARTBEAT_OPEN, WS_HEARTBEAT_PING, 0, NULL);

    /* the order holds even when the ping fell due first */
    cfg.idle_timeout = 100;
    clk.last_read = T0 - 500;
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 - 499);
    r = due(WS_HEARTBEAT_OPEN, late);
    assert_string_equal(r->reason, "idle timeout");
}

static void test_next_is_earliest(void **state)
{
    (void)state;
    /* next() is the minimum of the armed deadlines, whatever the table's order */
    cfg.idle_timeout = 100;
    cfg.pong_timeout = 50;
    clk.ping_sent = T0 + 40;
    clk.last_message = T0;
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 + 90); /* pong before idle (T0 + 100) */
    cfg.pong_timeout = 70;
    assert_true(next(WS_HEARTBEAT_OPEN) == T0 + 100); /* idle before pong (T0 + 110) */
    /* and at that deadline the rule that fires is the one next() pointed to */
    assert_string_equal(due(WS_HEARTBEAT_OPEN, T0 + 100)->reason, "idle timeout");
    assert_null(due(WS_HEARTBEAT_OPEN, before(T0 + 100)));
}

static void test_fractional_boundaries(void **state)
{
    (void)state;
    cfg.ping_interval = 0.1;
    clk.last_read = 1234.567;
    double at = next(WS_HEARTBEAT_OPEN);
    assert_true(at == 1234.567 + 0.1);
    assert_non_null(due(WS_HEARTBEAT_OPEN, at));
    assert_null(due(WS_HEARTBEAT_OPEN, before(at)));
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_handshake),
        T(test_closing),
        T(test_open_ping),
        T(test_open_pong_outstanding),
        T(test_open_idle),
        T(test_nothing_armed),
        T(test_order_pong_idle_ping),
        T(test_next_is_earliest),
        T(test_fractional_boundaries),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
