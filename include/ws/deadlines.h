/* Many deadlines on one timer: a binary min-heap of (time, deadline) per loop, which arms a
 * single ev_timer (through ws/clock.h, so a simulated clock drives it too) for the earliest.
 * A deadline is a small struct embedded in its owner (16 bytes and an 8-byte heap slot, against
 * an ev_timer's 48 and libev's 16-byte heap slot), for owners that are many and each need at
 * most one deadline. */
#ifndef WS_DEADLINES_H
#define WS_DEADLINES_H

#include <ev.h>
#include <stdint.h>

struct ws_deadlines;

struct ws_deadline {
    double at;    /* when it falls due, while set */
    uint32_t pos; /* heap position + 1; 0 while not set */
    uint32_t seq; /* equal times fire in the order they were set */
};

/* Called for a deadline that fell due (it is no longer set; the callback may set it again). */
typedef void (*ws_deadline_fn)(struct ws_deadlines *ds, struct ws_deadline *d);

struct ws_deadlines {
    struct ev_loop *loop;
    ev_timer timer;  /* armed for the earliest deadline while any is set */
    double armed_at; /* when timer falls due (0: not running) */
    ws_deadline_fn fire;
    struct ws_deadline **heap; /* owned; 8 bytes a deadline, the time is in the deadline */
    uint32_t n, cap, seq;
};

/* Starts an empty set on loop whose deadlines call fire. */
void ws_deadlines_init(struct ws_deadlines *ds, struct ev_loop *loop, ws_deadline_fn fire);

/* Stops the timer and frees the heap; the deadlines still set are forgotten. */
void ws_deadlines_free(struct ws_deadlines *ds);

/* Sets d (zeroed, or used before) to fall due at at, in the loop clock's seconds, but not
 * before 1 ms from now; replaces its earlier time when it was set. */
void ws_deadline_set(struct ws_deadlines *ds, struct ws_deadline *d, double at);

/* Unsets d; no-op when it is not set. */
void ws_deadline_clear(struct ws_deadlines *ds, struct ws_deadline *d);

#endif
