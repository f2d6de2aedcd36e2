/* A Redis pool's subscriptions (SUBSCRIBE, on a connection of their own, next to the pool's
 * command connections: redis_client.h). Callback-based, like the pool: messages go to fns, from
 * the loop. No pattern subscriptions. */
#ifndef WS_REDIS_SUB_H
#define WS_REDIS_SUB_H

#include <stddef.h>

struct ws_redis;
struct ws_redis_sub;

typedef void (*ws_redis_message_fn)(void *ud, const char *channel, size_t channel_len,
                                    const char *msg, size_t msg_len);

/* Calls fn for every message on channel until ws_redis_unsubscribe; on the subscription
 * connection, which reconnects with back-off and subscribes again. */
struct ws_redis_sub *ws_redis_subscribe(struct ws_redis *r, const char *channel, size_t len,
                                        ws_redis_message_fn fn, void *ud);

/* Ends s (also from inside its own fn) and frees it. */
void ws_redis_unsubscribe(struct ws_redis_sub *s);

#endif
