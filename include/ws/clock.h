/* The one clock the core and the Lua layer read and start timers on: libev's by default, or a
 * simulated one installed on a loop (the testing kit), whose time moves only when told to.
 * Convert: ev_now(loop) -> ws_clock_now(loop); ev_timer_set + ev_timer_start(loop, w) ->
 * ws_timer_start(loop, w, after, repeat); ev_timer_stop(loop, w) -> ws_timer_stop(loop, w). */
#ifndef WS_CLOCK_H
#define WS_CLOCK_H

#include <ev.h>
#include <stddef.h>

struct ws_clock;

/* Starts w (set up with ev_init or ev_timer_init) to fire after seconds, then every repeat
 * seconds when repeat > 0; restarts it when it runs already. On a simulated clock w->cb runs
 * from ws_clock_advance. ev_is_active(w) tells whether it is running, on either clock. */
void ws_timer_start(struct ev_loop *loop, ev_timer *w, double after, double repeat);

/* Stops w; no-op when it is not running. */
void ws_timer_stop(struct ev_loop *loop, ev_timer *w);

/* The loop's time in seconds (the epoch): ev_now, or the simulated time. */
double ws_clock_now(struct ev_loop *loop);

/* Installs a simulated clock at time start on loop: from now on the ws_timer_* calls on loop
 * use it and no libev timer runs for them. loop must have no ws_timer running. */
void ws_clock_simulate(struct ev_loop *loop, double start);

/* Moves the simulated time of loop forward by seconds (>= 0), firing every timer due on the
 * way, in order of deadline (equal deadlines in the order they were started), with one
 * non-blocking loop iteration (ev_run EVRUN_NOWAIT) after each, so what a timer set off (the
 * per-iteration pass, fed events) happens at that moment. A timer a callback starts for the
 * moment it runs at (0 s) fires at the next step of time, as on the loop's next iteration, so a
 * timer that keeps re-arming itself cannot hold time still. Returns the timers fired. */
size_t ws_clock_advance(struct ev_loop *loop, double seconds);

/* The simulated time at which the next timer of loop falls due; -1 when none runs. */
double ws_clock_next(struct ev_loop *loop);

/* Timers running on loop's simulated clock. */
size_t ws_clock_timers(struct ev_loop *loop);

/* Removes the simulated clock from loop (its timers are forgotten); no-op without one. */
void ws_clock_unsimulate(struct ev_loop *loop);

#endif
