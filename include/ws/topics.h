/* Topics (pub/sub): named sets of subscribers with O(1) subscribe, unsubscribe and membership
 * tests and O(subscribers) publish. A subscriber is a struct embedded in its owner (the
 * connection) that also lists its own topics, so a closing connection leaves every topic in
 * O(its topics). Delivery itself is the caller's: this module only keeps the sets. */
#ifndef WS_TOPICS_H
#define WS_TOPICS_H

#include "ws/map.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ws_topic {
    uint64_t hash;
    char *name; /* owned, NUL-terminated copy (names may hold NUL: use len) */
    size_t len;
    struct ws_topic *next_same_hash;
    struct ws_subscriber **subs; /* owned array, unordered */
    size_t nsubs, cap;
    struct ws_map index; /* subscriber address -> position in subs + 1 */
};

/* A subscriber's topics in subscription order: one allocation, made by its first subscription. */
struct ws_sublist {
    uint32_t n, cap;
    struct ws_topic *topics[];
};

struct ws_subscriber {
    struct ws_sublist *list; /* owned; NULL while subscribed to nothing */
};

/* The number of topics s is subscribed to. */
static inline uint32_t ws_subscriber_count(const struct ws_subscriber *s)
{
    return s->list ? s->list->n : 0;
}

/* s's i-th topic in subscription order (i < ws_subscriber_count(s)). */
static inline struct ws_topic *ws_subscriber_topic(const struct ws_subscriber *s, uint32_t i)
{
    return s->list->topics[i];
}

/* Told when a topic gets its first subscriber (created) or loses its last (before it is freed). */
typedef void (*ws_topics_change_fn)(void *ctx, const struct ws_topic *topic, bool created);

struct ws_topics {
    struct ws_map by_hash; /* name hash -> chain of topics */
    size_t count;
    ws_topics_change_fn on_change; /* may be NULL */
    void *ctx;
};

void ws_topics_init(struct ws_topics *t);

/* Frees every topic; subscribers must already have left (ws_topics_leave_all). */
void ws_topics_free(struct ws_topics *t);

/* The topic named name, or NULL when it has no subscribers. */
struct ws_topic *ws_topics_find(const struct ws_topics *t, const char *name, size_t len);

/* Subscribes s to name. Returns 1 when newly subscribed, 0 when it already was. */
int ws_topics_subscribe(struct ws_topics *t, struct ws_subscriber *s, const char *name, size_t len);

/* Unsubscribes s from name. Returns 1 when it was subscribed, 0 otherwise. A topic left without
 * subscribers is freed. */
int ws_topics_unsubscribe(struct ws_topics *t, struct ws_subscriber *s, const char *name,
                          size_t len);

/* True when s is subscribed to topic (NULL: false). */
bool ws_topics_has(const struct ws_topic *topic, const struct ws_subscriber *s);

/* Unsubscribes s from everything and frees its list. */
void ws_topics_leave_all(struct ws_topics *t, struct ws_subscriber *s);

#endif
