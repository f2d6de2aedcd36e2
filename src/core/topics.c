/* Topic sets. Each topic keeps an unordered array of subscribers plus a subscriber -> position
 * index, so removal is a swap with the last element. Topics exist only while they have subscribers.
 */
#include "ws/topics.h"

#include "ws/buf.h"

#include <stdlib.h>
#include <string.h>

/* A subscriber's key in a topic's index: its address, unique among live subscribers. */
static uint64_t key(const struct ws_subscriber *s)
{
    return (uint64_t)(uintptr_t)s;
}

void ws_topics_init(struct ws_topics *t)
{
    ws_map_init(&t->by_hash);
    t->count = 0;
    t->on_change = NULL;
    t->ctx = NULL;
}

void ws_topics_free(struct ws_topics *t)
{
    ws_map_free(&t->by_hash);
    t->count = 0;
}

struct ws_topic *ws_topics_find(const struct ws_topics *t, const char *name, size_t len)
{
    uint64_t h = ws_hash_bytes(name, len);
    for (struct ws_topic *topic = ws_map_get(&t->by_hash, h); topic; topic = topic->next_same_hash)
        if (topic->len == len && memcmp(topic->name, name, len) == 0)
            return topic;
    return NULL;
}

static struct ws_topic *create(struct ws_topics *t, const char *name, size_t len)
{
    struct ws_topic *topic = ws_xcalloc(1, sizeof(*topic));
    topic->hash = ws_hash_bytes(name, len);
    topic->name = ws_xstrndup(name, len);
    topic->len = len;
    ws_map_init(&topic->index);
    topic->next_same_hash = ws_map_get(&t->by_hash, topic->hash);
    ws_map_put(&t->by_hash, topic->hash, topic);
    t->count++;
    if (t->on_change)
        t->on_change(t->ctx, topic, true);
    return topic;
}

static void destroy(struct ws_topics *t, struct ws_topic *topic)
{
    if (t->on_change)
        t->on_change(t->ctx, topic, false);
    struct ws_topic *head = ws_map_get(&t->by_hash, topic->hash);
    if (head == topic) {
        if (topic->next_same_hash)
            ws_map_put(&t->by_hash, topic->hash, topic->next_same_hash);
        else
            ws_map_del(&t->by_hash, topic->hash);
    } else {
        while (head->next_same_hash != topic)
            head = head->next_same_hash;
        head->next_same_hash = topic->next_same_hash;
    }
    ws_map_free(&topic->index);
    free(topic->subs);
    free(topic->name);
    free(topic);
    t->count--;
}

bool ws_topics_has(const struct ws_topic *topic, const struct ws_subscriber *s)
{
    return topic && ws_map_get(&topic->index, key(s)) != NULL;
}

int ws_topics_subscribe(struct ws_topics *t, struct ws_subscriber *s, const char *name, size_t len)
{
    struct ws_topic *topic = ws_topics_find(t, name, len);
    if (!topic)
        topic = create(t, name, len);
    else if (ws_topics_has(topic, s))
        return 0;
    if (topic->nsubs == topic->cap) {
        topic->cap = topic->cap ? topic->cap * 2 : 4;
        topic->subs = ws_xrealloc(topic->subs, topic->cap * sizeof(*topic->subs));
    }
    topic->subs[topic->nsubs++] = s;
    ws_map_put(&topic->index, key(s), (void *)(uintptr_t)topic->nsubs);
    struct ws_sublist *l = s->list;
    if (!l || l->n == l->cap) {
        uint32_t cap = l ? l->cap * 2 : 2;
        l = ws_xrealloc(l, sizeof(*l) + cap * sizeof(l->topics[0]));
        if (!s->list)
            l->n = 0;
        l->cap = cap;
        s->list = l;
    }
    l->topics[l->n++] = topic;
    return 1;
}

/* Takes s out of topic's set (not out of s's own list). */
static void remove_member(struct ws_topics *t, struct ws_topic *topic, struct ws_subscriber *s)
{
    size_t pos = (uintptr_t)ws_map_del(&topic->index, key(s)) - 1;
    struct ws_subscriber *last = topic->subs[--topic->nsubs];
    if (last != s) {
        topic->subs[pos] = last;
        ws_map_put(&topic->index, key(last), (void *)(uintptr_t)(pos + 1));
    }
    if (topic->nsubs == 0)
        destroy(t, topic);
}

int ws_topics_unsubscribe(struct ws_topics *t, struct ws_subscriber *s, const char *name,
                          size_t len)
{
    struct ws_topic *topic = ws_topics_find(t, name, len);
    if (!ws_topics_has(topic, s))
        return 0;
    struct ws_sublist *l = s->list; /* not NULL: s is subscribed to topic */
    for (uint32_t i = 0; i < l->n; i++) {
        if (l->topics[i] == topic) {
            /* keep the subscriber's own order: conn:topics() lists them as subscribed */
            memmove(&l->topics[i], &l->topics[i + 1], (l->n - i - 1) * sizeof(l->topics[0]));
            l->n--;
            break;
        }
    }
    remove_member(t, topic, s);
    return 1;
}

void ws_topics_leave_all(struct ws_topics *t, struct ws_subscriber *s)
{
    for (uint32_t i = 0; i < ws_subscriber_count(s); i++)
        remove_member(t, s->list->topics[i], s);
    free(s->list);
    s->list = NULL;
}
