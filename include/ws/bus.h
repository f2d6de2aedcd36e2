/* The message bus between processes: what makes ws.broadcast and ws.publish reach every worker
 * and every node. One interface, two carriers: the built-in hub (the master process relays
 * between its workers over socketpairs) and Redis pub/sub (hiredis on libev) across machines.
 * Every message carries its origin, so a process never delivers its own message twice. */
#ifndef WS_BUS_H
#define WS_BUS_H

#include "ws/buf.h"

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ws_bus_kind {
    WS_BUS_BROADCAST = 1, /* to every connection */
    WS_BUS_TOPIC = 2,     /* to a topic's subscribers */
};

struct ws_bus_msg {
    uint64_t origin; /* the publishing process */
    uint8_t kind;    /* enum ws_bus_kind */
    uint8_t opcode;  /* WS_OP_TEXT or WS_OP_BINARY */
    const char *topic;
    size_t topic_len;
    const uint8_t *data;
    size_t len;
};

#define WS_BUS_HEADER 12 /* origin 8, kind 1, opcode 1, topic length 2 */
#define WS_BUS_MAX_TOPIC 65535

/* Receives a message published by another process. */
typedef void (*ws_bus_deliver_fn)(void *ctx, const struct ws_bus_msg *m);

struct ws_bus;

struct ws_bus_ops {
    /* Sends m to the other processes; WS_E_IO when it could not (counted as dropped). */
    int (*publish)(struct ws_bus *bus, const struct ws_bus_msg *m);
    /* This process now has subscribers for topic / no longer has any. */
    void (*subscribe)(struct ws_bus *bus, const char *topic, size_t len);
    void (*unsubscribe)(struct ws_bus *bus, const char *topic, size_t len);
    void (*free)(struct ws_bus *bus);
};

struct ws_bus {
    const struct ws_bus_ops *ops;
    uint64_t origin;
    ws_bus_deliver_fn deliver;
    void *ctx;
    uint64_t published, received, dropped;
};

/* Appends m's wire encoding (header, topic, data) to out. */
void ws_bus_encode(const struct ws_bus_msg *m, struct ws_buf *out);

/* Decodes p[0..n) into m (spans into p). 0 or WS_E_INVAL for a malformed message. */
int ws_bus_decode(const uint8_t *p, size_t n, struct ws_bus_msg *m);

/* A random origin id for this process. */
uint64_t ws_bus_new_origin(void);

/* The worker side of the built-in hub: messages go to the master over fd (one end of a
 * socketpair), which relays them to the other workers. */
struct ws_bus *ws_bus_hub_new(struct ev_loop *loop, int fd, ws_bus_deliver_fn deliver, void *ctx);

/* Redis pub/sub at url (any form ws_redis_parse_url takes: "redis://[:password@]host:port",
 * "host:port", "unix:/path"); reconnects with back-off and restores its subscriptions. Returns NULL
 * with a message in err for a malformed URL. */
struct ws_bus *ws_bus_redis_new(struct ev_loop *loop, const char *url, ws_bus_deliver_fn deliver,
                                void *ctx, char *err, size_t errlen);

#endif
