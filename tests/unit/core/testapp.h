/* The C test app that drives the runtime in unit tests: a struct ws_app_ops that records every
 * event the core reports (upgrade, open, message, close, drain, http, shutdown, release) into a
 * log the tests read, and behaves as a test programs it. Tests only: nothing in src/ reaches it. */
#ifndef TESTAPP_H
#define TESTAPP_H

#include "ws/app.h"
#include "ws/conn.h"
#include "ws/server.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum testapp_kind {
    TA_UPGRADE,
    TA_OPEN,
    TA_MESSAGE,
    TA_CLOSE,
    TA_DRAIN,
    TA_HTTP,
    TA_SHUTDOWN,
    TA_RELEASE,
};

struct testapp_event {
    enum testapp_kind kind;
    uint64_t conn; /* connection id; 0 for shutdown */
    /* message bytes, close reason, request target (upgrade, http) or shutdown reason: a copy
     * with a NUL after len (owned) */
    char *data;
    size_t len;
    char *protocols;  /* upgrade: every Sec-WebSocket-Protocol value, joined by ", " (owned) */
    bool binary;      /* message */
    bool pulled;      /* message: taken with ws_conn_next_message, not given by the ops */
    bool more;        /* message: ws_conn_reading_more when it came */
    int code;         /* close; release: the code the connection ended with (0: none) */
    uint32_t ntopics; /* close, release: topics the connection was still in */
    enum ws_conn_state state; /* the connection's state during the call */
    size_t listeners;         /* shutdown: the server's listeners still open */
    size_t closing;           /* shutdown: connections already closing or closed */
};

/* What the app does; zeroed: nothing but recording. */
struct testapp_behaviour {
    int refuse_status;       /* upgrade: refuse with this status */
    const char *refuse_body; /* ... and this body (NULL: the status text) */
    const char *protocol;    /* upgrade: choose this subprotocol */
    bool echo;               /* message: send it back as received */
    bool pull;               /* message: then take the read's next ones (ws_conn_next_message) */
    size_t send_on_open;     /* open: send this many text messages "m0", "m1", ... */
    const char *subscribe;   /* open: join this topic */
    int close_on_open;       /* open: ws_conn_close with this code */
    int close_on_message;    /* message: ws_conn_close with this code ... */
    bool abort_on_message;   /* ... or ws_conn_abort with it */
    size_t broadcast;        /* message: ws_server_broadcast it this many times, except sender */
    const char *http_path;   /* http: answer this target ... */
    int http_status;         /* ... with this status ... */
    const char *http_body;   /* ... and this body; other targets are not answered */
    bool defer;              /* upgrade, http (a matched target): answer later (pending) */
};

struct testapp {
    struct testapp_behaviour act;
    struct ws_server *srv; /* for broadcast and shutdown; NULL without a server */
    struct testapp_event *ev;
    size_t n, cap;
    int last_send; /* what the app's last ws_conn_send returned */
};

extern const struct ws_app_ops testapp_ops;

void testapp_init(struct testapp *a);
void testapp_free(struct testapp *a);

/* Events of kind for connection id (0: any connection). */
size_t testapp_count(const struct testapp *a, enum testapp_kind kind, uint64_t id);

/* Position in the log of the first event of kind for id (0: any), or -1. */
long testapp_index(const struct testapp *a, enum testapp_kind kind, uint64_t id);

/* The first event of kind for id (0: any), or NULL. */
const struct testapp_event *testapp_find(const struct testapp *a, enum testapp_kind kind,
                                         uint64_t id);

#endif
