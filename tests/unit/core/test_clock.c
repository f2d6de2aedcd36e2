/* Unit tests for the clock (src/core/clock.c): the simulated clock's timers fire in deadline
 * order (ties in start order), repeat, restart and stop; time moves only by ws_clock_advance;
 * and a connection's own timeouts (idle, handshake) run on it, an hour passing in no real time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "testkit.h"

#include "ws/clock.h"

#include <string.h>
#include <time.h>

static char fired[64];
static size_t nfired;

static void on_fire(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    assert_int_equal(revents, EV_TIMER);
    if (nfired < sizeof(fired) - 1)
        fired[nfired++] = *(const char *)w->data;
}

static void arm(ev_timer *w, const char *name)
{
    ev_init(w, on_fire);
    w->data = (void *)name;
}

static struct ev_loop *sim_loop(double start)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    ws_clock_simulate(loop, start);
    memset(fired, 0, sizeof(fired));
    nfired = 0;
    return loop;
}

static void free_loop(struct ev_loop *loop)
{
    ws_clock_unsimulate(loop);
    ev_loop_destroy(loop);
}

static void test_order_ties_and_now(void **state)
{
    (void)state;
    struct ev_loop *loop = sim_loop(1000);
    ev_timer t[6];
    static const char *names = "abcdef";
    arm(&t[0], names + 0);
    arm(&t[1], names + 1);
    arm(&t[2], names + 2);
    arm(&t[3], names + 3);
    arm(&t[4], names + 4);
    ws_timer_start(loop, &t[0], 5, 0);
    ws_timer_start(loop, &t[1], 1, 0);
    ws_timer_start(loop, &t[2], 3, 0);
    ws_timer_start(loop, &t[3], 3, 0); /* same deadline as c, started later */
    ws_timer_start(loop, &t[4], 0, 0);
    assert_true(ev_is_active(&t[0]));
    assert_int_equal(ws_clock_timers(loop), 5);
    assert_true(ws_clock_next(loop) == 1000); /* e: due now */
    assert_true(ws_clock_now(loop) == 1000);

    assert_int_equal(ws_clock_advance(loop, 0), 1); /* a 0 timer fires on the next move */
    assert_string_equal(fired, "e");
    assert_int_equal(ws_clock_advance(loop, 2.5), 1);
    assert_true(ws_clock_now(loop) == 1002.5);
    assert_int_equal(ws_clock_advance(loop, 10), 3);
    assert_string_equal(fired, "ebcda");
    assert_true(ws_clock_now(loop) == 1012.5);
    assert_false(ev_is_active(&t[0]));
    assert_int_equal(ws_clock_timers(loop), 0);
    assert_true(ws_clock_next(loop) == -1);
    free_loop(loop);
}

static void test_repeat_restart_stop(void **state)
{
    (void)state;
    struct ev_loop *loop = sim_loop(0);
    ev_timer every, once, stopped;
    arm(&every, "r");
    arm(&once, "o");
    arm(&stopped, "s");
    ws_timer_start(loop, &every, 10, 10);
    ws_timer_start(loop, &once, 5, 0);
    ws_timer_start(loop, &once, 25, 0); /* restarted: the first deadline is gone */
    ws_timer_start(loop, &stopped, 15, 0);
    ws_timer_stop(loop, &stopped);
    ws_timer_stop(loop, &stopped); /* a second stop is a no-op */
    assert_false(ev_is_active(&stopped));
    assert_int_equal(ws_clock_advance(loop, 35), 4);
    assert_string_equal(fired, "rror");
    assert_true(ev_is_active(&every));
    ws_timer_stop(loop, &every);
    assert_int_equal(ws_clock_advance(loop, 100), 0);
    free_loop(loop);
}

static int rearms;

static void on_rearm(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    rearms++;
    ws_timer_start(loop, w, 0, 0);
}

static void test_zero_timer_rearming_itself_lets_time_move(void **state)
{
    (void)state;
    struct ev_loop *loop = sim_loop(0);
    ev_timer spin, later;
    ev_init(&spin, on_rearm);
    arm(&later, "l");
    ws_timer_start(loop, &spin, 0, 0);
    ws_timer_start(loop, &later, 5, 0);
    rearms = 0;
    ws_clock_advance(loop, 0); /* once now; its next run waits for time to move */
    assert_int_equal(rearms, 1);
    ws_clock_advance(loop, 10); /* the next iteration (still 0), then once per step: 5, 10 */
    assert_int_equal(rearms, 4);
    assert_string_equal(fired, "l");
    assert_true(ws_clock_now(loop) == 10);
    ws_timer_stop(loop, &spin);
    free_loop(loop);
}

static void test_many_timers_in_order(void **state)
{
    (void)state;
    struct ev_loop *loop = sim_loop(0);
    enum { N = 500 };
    static ev_timer t[N];
    static char name[N];
    for (int i = 0; i < N; i++) {
        name[i] = (char)('a' + i % 26);
        arm(&t[i], &name[i]);
        ws_timer_start(loop, &t[i], (double)((i * 7919) % N), 0);
    }
    for (int i = 0; i < N; i += 3) /* stop a third of them, from anywhere in the heap */
        ws_timer_stop(loop, &t[i]);
    double last = -1;
    size_t total = 0;
    for (int s = 0; s < N; s++) {
        total += ws_clock_advance(loop, 1);
        assert_true(ws_clock_now(loop) > last);
        last = ws_clock_now(loop);
        nfired = 0; /* only the count matters here */
    }
    assert_int_equal(total, N - (N + 2) / 3);
    free_loop(loop);
}

/* A connection on a simulated clock: the handshake deadline and the idle close fall due when
 * the clock is moved, not before, however long the test takes. */
static void test_connection_timeouts_on_simulated_clock(void **state)
{
    struct ws_config cfg;
    testkit_config(&cfg);
    testkit_set(&cfg, "idle_timeout", "3600");
    testkit_set(&cfg, "handshake_timeout", "5");
    struct testkit *k = ws_xcalloc(1, sizeof(*k));
    *state = k;
    k->loop = NULL;
    testkit_init(k, &cfg);
    ws_config_free(&cfg);
    ws_clock_simulate(k->loop, 1e9);

    struct testclient idle, slow;
    testclient_open(k, &idle);
    testclient_pair(k, &slow, SOCK_STREAM, NULL, 0); /* never sends its request */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ws_clock_advance(k->loop, 4.9);
    testkit_pump(k);
    assert_non_null(testkit_conn(k, slow.id));
    ws_clock_advance(k->loop, 0.2);
    testkit_pump(k);
    assert_null(testkit_conn(k, slow.id)); /* handshake_timeout: dropped */
    assert_true(testclient_wait_eof(k, &slow));

    ws_clock_advance(k->loop, 3590);
    testkit_pump(k);
    assert_int_equal(testkit_count_state(k, WS_CONN_OPEN), 1);
    ws_clock_advance(k->loop, 5);
    testkit_pump(k);
    assert_int_equal(testkit_count_state(k, WS_CONN_OPEN), 0); /* idle: closing with 1001 */
    struct testframe f;
    testclient_frame(k, &idle, &f);
    assert_int_equal(f.opcode, WS_OP_CLOSE);
    assert_int_equal(f.code, 1001);
    testframe_free(&f);
    ws_clock_advance(k->loop, 1.5); /* close_timeout: dropped */
    testkit_pump(k);
    assert_true(testclient_wait_eof(k, &idle));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    assert_true((double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9 < 2.0);
    testclient_close(&idle);
    testclient_close(&slow);
    testkit_pump(k);
    ws_clock_unsimulate(k->loop);
    testkit_teardown(state);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_ties_and_now),
        cmocka_unit_test(test_repeat_restart_stop),
        cmocka_unit_test(test_zero_timer_rearming_itself_lets_time_move),
        cmocka_unit_test(test_many_timers_in_order),
        cmocka_unit_test_teardown(test_connection_timeouts_on_simulated_clock, testkit_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
