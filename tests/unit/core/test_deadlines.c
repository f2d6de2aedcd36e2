/* Unit tests for the deadline heap (src/core/deadlines.c) on a simulated clock: deadlines fire
 * in time order (ties in the order they were set), once each, when the clock reaches them;
 * moving, clearing and re-setting from a callback; one timer runs while any deadline is set. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/clock.h"
#include "ws/deadlines.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define N 500

struct item {
    struct ws_deadline d; /* first: the callback finds the item at the deadline's address */
    double at;            /* when it was meant to fire */
    int id, fired;
    double fired_at;
};

static struct item items[N];
static int order[N], nfired;
static struct ws_deadline *clear_on_fire; /* an item's callback clears this one */
static int reset_times;                   /* the first fired item sets itself again this often */

static void on_due(struct ws_deadlines *ds, struct ws_deadline *d)
{
    struct item *it = (struct item *)d;
    assert_int_equal(d->pos, 0); /* no longer set */
    it->fired++;
    it->fired_at = ws_clock_now(ds->loop);
    if (nfired < N)
        order[nfired] = it->id;
    nfired++;
    if (clear_on_fire) {
        ws_deadline_clear(ds, clear_on_fire);
        clear_on_fire = NULL;
    }
    if (reset_times > 0) {
        reset_times--;
        ws_deadline_set(ds, d, ws_clock_now(ds->loop) + 1);
    }
}

static struct ev_loop *setup_loop(struct ws_deadlines *ds)
{
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_non_null(loop);
    ws_clock_simulate(loop, 1000);
    ws_deadlines_init(ds, loop, on_due);
    memset(items, 0, sizeof(items));
    for (int i = 0; i < N; i++)
        items[i].id = i;
    nfired = 0;
    clear_on_fire = NULL;
    reset_times = 0;
    return loop;
}

static void teardown_loop(struct ev_loop *loop, struct ws_deadlines *ds)
{
    ws_deadlines_free(ds);
    assert_int_equal(ws_clock_timers(loop), 0);
    ws_clock_unsimulate(loop);
    ev_loop_destroy(loop);
}

/* Random times with many ties, some moved and some cleared: what fires, fires once, at its time,
 * in (time, last set) order. */
static void test_order_ties_moves_and_clears(void **state)
{
    (void)state;
    struct ws_deadlines ds;
    struct ev_loop *loop = setup_loop(&ds);
    srand(7);
    for (int i = 0; i < N; i++) {
        items[i].at = 1000 + 1 + rand() % 50; /* whole seconds: ties */
        ws_deadline_set(&ds, &items[i].d, items[i].at);
    }
    assert_int_equal(ws_clock_timers(loop), 1);
    bool cleared[N] = {false};
    for (int i = 0; i < N; i += 7) { /* moved later or earlier: now the last set at its time */
        items[i].at = 1000 + 1 + rand() % 50;
        ws_deadline_set(&ds, &items[i].d, items[i].at);
    }
    for (int i = 3; i < N; i += 11) {
        ws_deadline_clear(&ds, &items[i].d);
        ws_deadline_clear(&ds, &items[i].d); /* twice: no-op */
        cleared[i] = true;
    }
    assert_int_equal(ws_clock_advance(loop, 0.5), 0);
    assert_int_equal(nfired, 0);
    ws_clock_advance(loop, 100);
    int expected = 0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(items[i].fired, cleared[i] ? 0 : 1);
        if (!cleared[i]) {
            expected++;
            assert_true(items[i].fired_at == items[i].at);
        }
    }
    assert_int_equal(nfired, expected);
    for (int k = 1; k < nfired; k++) {
        const struct item *a = &items[order[k - 1]], *b = &items[order[k]];
        assert_true(a->at < b->at || (a->at == b->at && (int32_t)(a->d.seq - b->d.seq) < 0));
    }
    assert_int_equal(ws_clock_timers(loop), 0); /* nothing set: no timer */
    teardown_loop(loop, &ds);
}

/* A callback that sets its own deadline again and clears another's; a deadline in the past
 * fires 1 ms on, not at once. */
static void test_callbacks_and_past_deadlines(void **state)
{
    (void)state;
    struct ws_deadlines ds;
    struct ev_loop *loop = setup_loop(&ds);
    ws_deadline_set(&ds, &items[0].d, 1005);
    ws_deadline_set(&ds, &items[1].d, 1005.5);
    reset_times = 3;
    clear_on_fire = &items[1].d; /* item 0's first firing takes item 1 out */
    ws_clock_advance(loop, 5);
    assert_int_equal(items[0].fired, 1);
    ws_clock_advance(loop, 10);
    assert_int_equal(items[0].fired, 4); /* 1005, then 1006, 1007, 1008 */
    assert_true(items[0].fired_at == 1008);
    assert_int_equal(items[1].fired, 0);

    ws_deadline_set(&ds, &items[2].d, 10); /* long past */
    assert_int_equal(ws_clock_advance(loop, 0), 0);
    assert_int_equal(items[2].fired, 0);
    ws_clock_advance(loop, 0.001);
    assert_int_equal(items[2].fired, 1);
    teardown_loop(loop, &ds);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_ties_moves_and_clears),
        cmocka_unit_test(test_callbacks_and_past_deadlines),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
