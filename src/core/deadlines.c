/* One timer for many deadlines: the binary heap, and the ev_timer that follows its head. The
 * timer is restarted only when the head moves earlier than it is armed for; a timer that fires
 * early (its head was cleared or moved later) fires nothing and re-arms for the new head. */
#include "ws/deadlines.h"

#include "ws/buf.h"
#include "ws/clock.h"

#include <stdbool.h>
#include <stdlib.h>

#define MIN_WAIT 0.001 /* seconds: a deadline already past fires on the next iteration */

static bool before(const struct ws_deadline *a, const struct ws_deadline *b)
{
    return a->at < b->at || (a->at == b->at && (int32_t)(a->seq - b->seq) < 0);
}

static void place(struct ws_deadlines *ds, uint32_t i, struct ws_deadline *d)
{
    ds->heap[i] = d;
    d->pos = i + 1;
}

static void sift_up(struct ws_deadlines *ds, uint32_t i)
{
    struct ws_deadline *d = ds->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (!before(d, ds->heap[parent]))
            break;
        place(ds, i, ds->heap[parent]);
        i = parent;
    }
    place(ds, i, d);
}

static void sift_down(struct ws_deadlines *ds, uint32_t i)
{
    struct ws_deadline *d = ds->heap[i];
    for (;;) {
        uint32_t child = 2 * i + 1;
        if (child >= ds->n)
            break;
        if (child + 1 < ds->n && before(ds->heap[child + 1], ds->heap[child]))
            child++;
        if (!before(ds->heap[child], d))
            break;
        place(ds, i, ds->heap[child]);
        i = child;
    }
    place(ds, i, d);
}

/* Takes slot i out of the heap. */
static void remove_at(struct ws_deadlines *ds, uint32_t i)
{
    ds->heap[i]->pos = 0;
    if (i == --ds->n)
        return;
    place(ds, i, ds->heap[ds->n]);
    sift_down(ds, i);
    sift_up(ds, ds->heap[i]->pos - 1);
}

/* Arms the timer for the head when it falls due before the timer does. */
static void follow_head(struct ws_deadlines *ds)
{
    if (!ds->n) {
        if (ds->armed_at) { /* nothing left: an idle loop keeps no timer */
            ws_timer_stop(ds->loop, &ds->timer);
            ds->armed_at = 0;
        }
        return;
    }
    double at = ds->heap[0]->at;
    if (ds->armed_at && ds->armed_at <= at)
        return;
    double in = at - ws_clock_now(ds->loop);
    ws_timer_start(ds->loop, &ds->timer, in > MIN_WAIT ? in : MIN_WAIT, 0);
    ds->armed_at = at;
}

static void on_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)revents;
    struct ws_deadlines *ds = w->data;
    ds->armed_at = 0;
    double now = ws_clock_now(loop);
    while (ds->n && ds->heap[0]->at <= now) {
        struct ws_deadline *d = ds->heap[0];
        remove_at(ds, 0);
        ds->fire(ds, d);
    }
    follow_head(ds);
}

void ws_deadlines_init(struct ws_deadlines *ds, struct ev_loop *loop, ws_deadline_fn fire)
{
    ds->loop = loop;
    ev_init(&ds->timer, on_timer);
    ds->timer.data = ds;
    ds->armed_at = 0;
    ds->fire = fire;
    ds->heap = NULL;
    ds->n = ds->cap = ds->seq = 0;
}

void ws_deadlines_free(struct ws_deadlines *ds)
{
    ws_timer_stop(ds->loop, &ds->timer);
    ds->armed_at = 0;
    for (uint32_t i = 0; i < ds->n; i++)
        ds->heap[i]->pos = 0;
    free(ds->heap);
    ds->heap = NULL;
    ds->n = ds->cap = 0;
}

void ws_deadline_set(struct ws_deadlines *ds, struct ws_deadline *d, double at)
{
    double soonest = ws_clock_now(ds->loop) + MIN_WAIT;
    if (at < soonest)
        at = soonest;
    d->at = at;
    d->seq = ds->seq++;
    if (d->pos) {
        sift_down(ds, d->pos - 1);
        sift_up(ds, d->pos - 1);
    } else {
        if (ds->n == ds->cap) {
            ds->cap = ds->cap ? ds->cap * 2 : 64;
            ds->heap = ws_xrealloc(ds->heap, ds->cap * sizeof(*ds->heap));
        }
        ds->heap[ds->n] = d;
        sift_up(ds, ds->n++);
    }
    follow_head(ds);
}

void ws_deadline_clear(struct ws_deadlines *ds, struct ws_deadline *d)
{
    if (!d->pos)
        return;
    remove_at(ds, d->pos - 1);
    follow_head(ds); /* the timer stays armed when the head only moved later */
}
