/* The clock behind every timer of the core and the Lua layer: a thin pass-through to libev, or
 * a simulated clock (a binary heap of deadlines) kept in the loop's userdata. The simulated
 * clock never reads real time and never sleeps: time moves by ws_clock_advance alone. */
#include "ws/clock.h"

#include "ws/buf.h"

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

struct slot {
    double at;
    uint64_t seq; /* start order: ties fire first started, first fired */
    ev_timer *w;
};

struct ws_clock {
    double now;
    struct slot *heap; /* w->active is the slot's index + 1 */
    size_t n, cap;
    uint64_t seq;
};

static struct ws_clock *sim(struct ev_loop *loop)
{
    return ev_userdata(loop);
}

static bool before(const struct slot *a, const struct slot *b)
{
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static void place(struct ws_clock *c, size_t i, struct slot s)
{
    c->heap[i] = s;
    s.w->active = (int)i + 1;
}

static void sift_up(struct ws_clock *c, size_t i)
{
    struct slot s = c->heap[i];
    while (i > 0 && before(&s, &c->heap[(i - 1) / 2])) {
        place(c, i, c->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    place(c, i, s);
}

static void sift_down(struct ws_clock *c, size_t i)
{
    struct slot s = c->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        if (l < c->n && before(&c->heap[l], &s))
            m = l;
        if (l + 1 < c->n && before(&c->heap[l + 1], m == i ? &s : &c->heap[m]))
            m = l + 1;
        if (m == i)
            break;
        place(c, i, c->heap[m]);
        i = m;
    }
    place(c, i, s);
}

static void sim_remove(struct ws_clock *c, ev_timer *w)
{
    size_t i = (size_t)w->active - 1;
    assert(i < c->n && c->heap[i].w == w);
    w->active = 0;
    if (--c->n == i)
        return;
    c->heap[i] = c->heap[c->n];
    c->heap[i].w->active = (int)i + 1;
    sift_down(c, i);
    sift_up(c, (size_t)c->heap[i].w->active - 1);
}

static void sim_add(struct ws_clock *c, ev_timer *w, double at)
{
    if (c->n == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 64;
        c->heap = ws_xrealloc(c->heap, c->cap * sizeof(*c->heap));
    }
    c->heap[c->n] = (struct slot){at, c->seq++, w};
    w->at = at;
    sift_up(c, c->n++);
}

void ws_timer_start(struct ev_loop *loop, ev_timer *w, double after, double repeat)
{
    struct ws_clock *c = sim(loop);
    if (!c) {
        ev_timer_stop(loop, w);
        ev_timer_set(w, after, repeat);
        ev_timer_start(loop, w);
        return;
    }
    if (w->active)
        sim_remove(c, w);
    w->repeat = repeat;
    sim_add(c, w, c->now + (after > 0 ? after : 0));
}

void ws_timer_stop(struct ev_loop *loop, ev_timer *w)
{
    struct ws_clock *c = sim(loop);
    if (!c)
        ev_timer_stop(loop, w);
    else if (w->active)
        sim_remove(c, w);
}

double ws_clock_now(struct ev_loop *loop)
{
    struct ws_clock *c = sim(loop);
    return c ? c->now : ev_now(loop);
}

void ws_clock_simulate(struct ev_loop *loop, double start)
{
    assert(!sim(loop));
    struct ws_clock *c = ws_xcalloc(1, sizeof(*c));
    c->now = start;
    ev_set_userdata(loop, c);
}

/* The earliest deadline after now, or until when none comes before it. */
static double next_after(const struct ws_clock *c, double now, double until)
{
    double next = until;
    for (size_t i = 0; i < c->n; i++)
        if (c->heap[i].at > now && c->heap[i].at < next)
            next = c->heap[i].at;
    return next;
}

size_t ws_clock_advance(struct ev_loop *loop, double seconds)
{
    struct ws_clock *c = sim(loop);
    assert(c && seconds >= 0);
    double until = c->now + seconds;
    size_t fired = 0;
    uint64_t limit = c->seq; /* timers started from here on at this instant wait for the next */
    while (c->n > 0 && c->heap[0].at <= until) {
        ev_timer *w = c->heap[0].w;
        if (c->heap[0].at > c->now) {
            c->now = c->heap[0].at;
            limit = c->seq;
        } else if (c->heap[0].seq >= limit) {
            /* started by a callback at this instant (a 0 s timer re-arming itself): as on the
             * loop, it fires at the next step of time, not again now */
            if (c->now >= until)
                break;
            c->now = next_after(c, c->now, until);
            limit = c->seq;
            continue;
        }
        sim_remove(c, w);
        if (w->repeat > 0)
            sim_add(c, w, c->now + w->repeat);
        fired++;
        w->cb(loop, w, EV_TIMER);
        ev_run(loop, EVRUN_NOWAIT);
    }
    c->now = until;
    return fired;
}

double ws_clock_next(struct ev_loop *loop)
{
    struct ws_clock *c = sim(loop);
    return c && c->n > 0 ? c->heap[0].at : -1;
}

size_t ws_clock_timers(struct ev_loop *loop)
{
    struct ws_clock *c = sim(loop);
    return c ? c->n : 0;
}

void ws_clock_unsimulate(struct ev_loop *loop)
{
    struct ws_clock *c = sim(loop);
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++)
        c->heap[i].w->active = 0;
    free(c->heap);
    free(c);
    ev_set_userdata(loop, NULL);
}
