/* Every per-connection timeout in one table (SPEC §3): the handshake and close deadlines, the
 * ping sent after ping_interval of silence, the pong awaited for pong_timeout, the idle close.
 * Pure: it reads a connection's clocks and the options and says what falls due when; the
 * connection arms its one timer and carries the action out. */
#ifndef WS_HEARTBEAT_H
#define WS_HEARTBEAT_H

#include "ws/config.h"

enum ws_heartbeat_phase {
    WS_HEARTBEAT_HANDSHAKE, /* reading the request head */
    WS_HEARTBEAT_OPEN,      /* WebSocket open */
    WS_HEARTBEAT_CLOSING,   /* our close frame or HTTP answer queued */
};

/* A connection's clocks, in the loop's seconds; 0 means never. */
struct ws_heartbeat_clocks {
    double started;   /* accepted at */
    double last_read; /* any bytes from the peer */
    double ping_sent; /* the outstanding ping, 0 when none */
    /* never needed at once: the idle rule runs only while open, the close deadline only while
     * closing, and a message is counted only while open */
    union {
        double last_message;  /* last data message (open) */
        double closing_since; /* entered CLOSING (closing) */
    };
};

enum ws_heartbeat_action {
    WS_HEARTBEAT_DROP,  /* drop the socket (reported as 1006 with reason) */
    WS_HEARTBEAT_CLOSE, /* start the close handshake with code and reason */
    WS_HEARTBEAT_PING,  /* send a ping and set ping_sent */
};

struct ws_heartbeat_rule {
    enum ws_heartbeat_phase phase;
    double (*due)(const struct ws_heartbeat_clocks *t, const struct ws_config *o); /* 0: off */
    enum ws_heartbeat_action action;
    int code;          /* the close code reported or sent */
    const char *event; /* logged at info when it fires, or NULL */
    const char *reason;
};

/* The earliest deadline in phase; 0 when none is armed. */
double ws_heartbeat_next(enum ws_heartbeat_phase phase, const struct ws_heartbeat_clocks *t,
                         const struct ws_config *o);

/* The first rule of phase that is due at now, in the table's order (pong before idle before
 * ping), or NULL. */
const struct ws_heartbeat_rule *ws_heartbeat_due(enum ws_heartbeat_phase phase,
                                                 const struct ws_heartbeat_clocks *t,
                                                 const struct ws_config *o, double now);

#endif
