/* The handler budget's watchdog: a timer on the loop thread's CPU clock that arms a count hook
 * on the thread of a run that computes too long, that hook, which raises once the run's budget
 * is spent, and an armed hook passed on between the threads of a nested run. It keeps no
 * deadline of its own: lb_state's run bookkeeping (lb_budget_begin, lb_protect) says when a run
 * starts and ends and when its budget does. */
#include "ws/lb.h"

#include <lauxlib.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HOOK_COUNT 10000 /* VM instructions between two looks at the clock, once armed */
#define TICK_NS 5000000  /* the watchdog's period, in CPU time of the loop's thread */

/* The budget watchdog. A count hook makes every VM instruction trap, so runs go without one: a
 * timer on the loop thread's CPU clock ticks every TICK_NS while that thread computes, and a
 * tick that finds the same run as the tick before (it has computed for a full period) arms the
 * count hook on the thread running it, as lua.c arms its hook from a signal handler; from then on
 * lb_budget_hook looks at the clock every HOOK_COUNT instructions. A run only bumps seq and says
 * which thread runs: no clock read, no hook. An idle server's thread uses no CPU: no ticks.
 * Process-wide (one loop thread per process); a forked worker starts its own. */
struct lb_watchdog lb_watchdog;

lua_State *lb_run_on(lua_State *co)
{
    lua_State *prev = lb_watchdog.running;
    lb_watchdog.running = co;
    if (prev && prev != co && lua_gethook(prev) == lb_budget_hook &&
        lb_watchdog.armed == lb_watchdog.seq)
        lua_sethook(co, lb_budget_hook, LUA_MASKCOUNT, lua_gethookcount(prev));
    return prev;
}

void lb_run_off(lua_State *co, lua_State *prev)
{
    lb_watchdog.running = prev;
    if (prev && prev != co && lua_gethook(co) == lb_budget_hook &&
        lb_watchdog.armed == lb_watchdog.seq)
        lua_sethook(prev, lb_budget_hook, LUA_MASKCOUNT, lua_gethookcount(co));
}

/* SIGPROF, delivered to the loop thread only. lua_sethook is safe in a signal handler. */
static void on_tick(int sig)
{
    (void)sig;
    lua_State *L = lb_watchdog.running;
    unsigned long seq = lb_watchdog.seq;
    if (L && seq == lb_watchdog.seen && lb_watchdog.armed != seq) {
        lb_watchdog.armed = seq;
        lua_sethook(L, lb_budget_hook, LUA_MASKCOUNT, HOOK_COUNT);
    }
    lb_watchdog.seen = seq;
}

int lb_watchdog_start(void)
{
    if (lb_watchdog.pid == getpid())
        return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_tick;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGPROF, &sa, NULL) < 0)
        return -1;
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID; /* never another thread (libcurl's resolver) */
    sev.sigev_signo = SIGPROF;
    sev._sigev_un._tid = (pid_t)syscall(SYS_gettid);
    timer_t timer;
    if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &timer) < 0)
        return -1;
    struct itimerspec its = {.it_interval = {0, TICK_NS}, .it_value = {0, TICK_NS}};
    if (timer_settime(timer, 0, &its, NULL) < 0) {
        timer_delete(timer);
        return -1;
    }
    lb_watchdog.timer = timer;
    lb_watchdog.pid = getpid();
    return 0;
}

void lb_budget_stop(void)
{
    if (lb_watchdog.pid != getpid())
        return;
    timer_delete(lb_watchdog.timer);
    signal(SIGPROF, SIG_IGN); /* a tick already on its way finds no handler to call */
    lb_watchdog.pid = 0;
}

void lb_budget_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct lb_app *a = lb_app_of(L);
    if (lb_watchdog.armed != lb_watchdog.seq || a->depth == 0) {
        lua_sethook(L, NULL, 0, 0); /* armed in a run that is over */
        return;
    }
    if (a->timed_out || lb_mono_now() > a->deadline) {
        if (!a->timed_out) {
            /* from now on raise at every instruction: a pcall loop cannot swallow it, the
             * error surfaces at the first instruction outside the innermost pcall */
            a->timed_out = true;
            a->hooked = L; /* hooks are per thread: this one is put back after the run */
            lua_sethook(L, lb_budget_hook, LUA_MASKCOUNT, 1);
        }
        luaL_error(L, "handler exceeded handler_timeout (%f s)", a->handler_timeout);
    }
}
