/* The timeout table. Both arming a connection's timer (ws_heartbeat_next) and handling it
 * (ws_heartbeat_due) read the same rows, so each rule is written once. No I/O, no libev. */
#include "ws/heartbeat.h"

#include <stddef.h>

static double handshake_due(const struct ws_heartbeat_clocks *t, const struct ws_config *o)
{
    return t->started + o->handshake_timeout;
}

static double close_due(const struct ws_heartbeat_clocks *t, const struct ws_config *o)
{
    return t->closing_since + o->close_timeout;
}

static double pong_due(const struct ws_heartbeat_clocks *t, const struct ws_config *o)
{
    return t->ping_sent > 0 ? t->ping_sent + o->pong_timeout : 0;
}

static double idle_due(const struct ws_heartbeat_clocks *t, const struct ws_config *o)
{
    return o->idle_timeout > 0 ? t->last_message + o->idle_timeout : 0;
}

/* A ping when the peer has been silent for ping_interval and none is outstanding. */
static double ping_due(const struct ws_heartbeat_clocks *t, const struct ws_config *o)
{
    return o->ping_interval > 0 && !t->ping_sent ? t->last_read + o->ping_interval : 0;
}

static const struct ws_heartbeat_rule rules[] = {
    {WS_HEARTBEAT_HANDSHAKE, handshake_due, WS_HEARTBEAT_DROP, 1006, "handshake_timeout",
     "handshake timeout"},
    {WS_HEARTBEAT_CLOSING, close_due, WS_HEARTBEAT_DROP, 1006, NULL, "close timeout"},
    {WS_HEARTBEAT_OPEN, pong_due, WS_HEARTBEAT_CLOSE, 1001, "pong_timeout", "pong timeout"},
    {WS_HEARTBEAT_OPEN, idle_due, WS_HEARTBEAT_CLOSE, 1001, NULL, "idle timeout"},
    {WS_HEARTBEAT_OPEN, ping_due, WS_HEARTBEAT_PING, 0, NULL, NULL},
};

#define NRULES (sizeof(rules) / sizeof(rules[0]))

double ws_heartbeat_next(enum ws_heartbeat_phase phase, const struct ws_heartbeat_clocks *t,
                         const struct ws_config *o)
{
    double next = 0;
    for (size_t i = 0; i < NRULES; i++) {
        double at = rules[i].phase == phase ? rules[i].due(t, o) : 0;
        if (at && (!next || at < next))
            next = at;
    }
    return next;
}

const struct ws_heartbeat_rule *ws_heartbeat_due(enum ws_heartbeat_phase phase,
                                                 const struct ws_heartbeat_clocks *t,
                                                 const struct ws_config *o, double now)
{
    for (size_t i = 0; i < NRULES; i++) {
        double at = rules[i].phase == phase ? rules[i].due(t, o) : 0;
        if (at && now >= at)
            return &rules[i];
    }
    return NULL;
}
