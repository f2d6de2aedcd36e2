/* The application interface: the one table of callbacks through which the core calls the app.
 * The Lua layer (lb_*) implements it; a C test app can too. The core never includes lua.h.
 * Every callback is optional (NULL) and runs on the loop thread; a connection passed in stays
 * valid for the whole call even if the callback closes it. */
#ifndef WS_APP_H
#define WS_APP_H

#include "ws/http.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ws_conn;
struct ws_server;

/* What upgrade() decides. The core zeroes it before the call and frees what it owns after. */
struct ws_upgrade_reply {
    int status; /* 0: accept; otherwise refuse with this HTTP status */
    char *body; /* refusal body (owned, malloc'd), or NULL for the status text */
    size_t body_len;
    char *protocol; /* accept: chosen subprotocol (owned); must be one the client offered */
    char *headers;  /* refusal: extra header lines, each ending in CRLF (owned), or NULL */
    bool pending;   /* the app decides later and then calls ws_conn_upgrade_decided */
};

/* What an http() route answers. */
struct ws_http_reply {
    int status;
    char *body; /* owned, malloc'd */
    size_t body_len;
    char *headers;      /* extra header lines, each ending in CRLF (owned), or NULL */
    char *content_type; /* owned, or NULL for text/plain */
    bool pending;       /* the app answers later and then calls ws_conn_http_answered */
};

struct ws_app_ops {
    /* Before the 101: may refuse or pick a protocol, or decide later (reply->pending). */
    void (*upgrade)(void *app, struct ws_conn *c, const struct ws_http_request *req,
                    struct ws_upgrade_reply *reply);
    void (*open)(void *app, struct ws_conn *c);
    /* One whole message; data is valid only during the call. */
    void (*message)(void *app, struct ws_conn *c, const uint8_t *data, size_t len, bool binary);
    /* After the connection closed (code 1006 when it dropped without a close frame). The
     * connection's topics are still attached. */
    void (*close)(void *app, struct ws_conn *c, int code, const uint8_t *reason, size_t len);
    /* The send queue emptied after having been above the low-water mark. */
    void (*drain)(void *app, struct ws_conn *c);
    /* A plain HTTP request (no upgrade; req->body holds its body). Returns true when it answered
     * in *reply, or will answer later (reply->pending). */
    bool (*http)(void *app, struct ws_conn *c, const struct ws_http_request *req,
                 struct ws_http_reply *reply);
    /* True when the app serves HTTP routes: a GET no route or file serves is then a 404, not a
     * 426. */
    bool (*serves_http)(void *app);
    /* Graceful shutdown begins. */
    void (*shutdown)(void *app, const char *reason);
    /* Reload requested (SIGHUP). */
    void (*reload)(void *app);
    /* Bytes of memory the app holds (the Lua heap), for /metrics. */
    size_t (*memory)(void *app);
    /* The connection is about to be freed: drop every reference to it. */
    void (*release)(void *app, struct ws_conn *c);
    /* c is CLOSED and about to be reported (close) and freed. True keeps it: the app is still
     * running a handler for it (SPEC §4a: close runs after it), and calls ws_conn_unhold when
     * done. Not asked once the server is being freed. */
    bool (*hold)(void *app, struct ws_conn *c);
    /* True while handlers wait (timers, HTTP): a graceful shutdown waits for them. */
    bool (*busy)(void *app);
    /* Ends every wait: each waiting call returns nil, reason, and later ones return at once. */
    void (*cancel)(void *app, const char *reason);
};

#endif
