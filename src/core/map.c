/* The hash map, the keyset and the seeded byte hash. Both tables share one probing core;
 * backward-shift deletion keeps probe sequences short without tombstones, so a table under churn
 * (connections coming and going) never degrades. */
#include "ws/map.h"

#include "ws/buf.h"

#include <assert.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static uint64_t mix(uint64_t x)
{
    /* splitmix64 finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

/* ---- The table both kinds share: linear probing over cap slots (a power of two) of a kind's
 * size; an empty slot is all zero bytes; removal by backward shift. ---- */

struct kind {
    size_t size;                       /* bytes a slot */
    bool (*used)(const void *slot);    /* false for an empty slot */
    uint64_t (*key)(const void *slot); /* a used slot's key */
};

static bool map_used(const void *slot)
{
    return ((const struct ws_map_slot *)slot)->value != NULL;
}

static uint64_t map_key(const void *slot)
{
    return ((const struct ws_map_slot *)slot)->key;
}

static bool keyset_used(const void *slot)
{
    return *(void *const *)slot != NULL;
}

static uint64_t keyset_key(const void *slot)
{
    uint64_t k; /* the record's first member */
    memcpy(&k, *(void *const *)slot, sizeof(k));
    return k;
}

static const struct kind MAP = {sizeof(struct ws_map_slot), map_used, map_key};
static const struct kind KEYSET = {sizeof(void *), keyset_used, keyset_key};

static void *slot_at(const struct kind *k, const void *slots, size_t i)
{
    return (char *)slots + i * k->size;
}

/* The slot holding key, or the empty slot that ends its probe run. cap > 0. */
static size_t find(const struct kind *k, const void *slots, size_t cap, uint64_t key)
{
    size_t mask = cap - 1;
    size_t i = (size_t)mix(key) & mask;
    while (k->used(slot_at(k, slots, i)) && k->key(slot_at(k, slots, i)) != key)
        i = (i + 1) & mask;
    return i;
}

/* The same slots in a table of cap slots; frees the old one. */
static void *resize(const struct kind *k, void *old, size_t old_cap, size_t cap)
{
    void *slots = ws_xcalloc(cap, k->size);
    for (size_t i = 0; i < old_cap; i++) {
        const void *s = slot_at(k, old, i);
        if (k->used(s))
            memcpy(slot_at(k, slots, find(k, slots, cap, k->key(s))), s, k->size);
    }
    free(old);
    return slots;
}

/* The table ready for one more slot (at most 3/4 full after it). */
static void *make_room(const struct kind *k, void *slots, size_t *cap, size_t count)
{
    if ((count + 1) * 4 <= *cap * 3)
        return slots;
    size_t to = *cap ? *cap * 2 : 8;
    slots = resize(k, slots, *cap, to);
    *cap = to;
    return slots;
}

/* Empties slot i, pulling later members of its probe run into the hole; then frees the table
 * when count (after the removal) is 0, or halves it when mostly empty. */
static void *remove_at(const struct kind *k, void *slots, size_t *cap, size_t count, size_t i)
{
    size_t mask = *cap - 1;
    size_t hole = i;
    for (size_t j = (i + 1) & mask; k->used(slot_at(k, slots, j)); j = (j + 1) & mask) {
        size_t home = (size_t)mix(k->key(slot_at(k, slots, j))) & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            memcpy(slot_at(k, slots, hole), slot_at(k, slots, j), k->size);
            hole = j;
        }
    }
    memset(slot_at(k, slots, hole), 0, k->size);
    if (count == 0) {
        free(slots);
        *cap = 0;
        return NULL;
    }
    if (*cap > 64 && count * 8 < *cap) {
        slots = resize(k, slots, *cap, *cap / 2);
        *cap /= 2;
    }
    return slots;
}

/* ---- ws_map ---- */

void ws_map_init(struct ws_map *m)
{
    m->slots = NULL;
    m->cap = 0;
    m->count = 0;
}

void ws_map_free(struct ws_map *m)
{
    free(m->slots);
    ws_map_init(m);
}

void *ws_map_get(const struct ws_map *m, uint64_t key)
{
    return m->cap ? m->slots[find(&MAP, m->slots, m->cap, key)].value : NULL;
}

void ws_map_put(struct ws_map *m, uint64_t key, void *value)
{
    assert(value);
    m->slots = make_room(&MAP, m->slots, &m->cap, m->count);
    struct ws_map_slot *slot = &m->slots[find(&MAP, m->slots, m->cap, key)];
    if (!slot->value)
        m->count++;
    slot->key = key;
    slot->value = value;
}

void *ws_map_del(struct ws_map *m, uint64_t key)
{
    if (!m->cap)
        return NULL;
    size_t i = find(&MAP, m->slots, m->cap, key);
    void *value = m->slots[i].value;
    if (value)
        m->slots = remove_at(&MAP, m->slots, &m->cap, --m->count, i);
    return value;
}

/* ---- ws_keyset: slots are the records, keyed by their first member ---- */

void ws_keyset_init(struct ws_keyset *s)
{
    s->slots = NULL;
    s->cap = 0;
    s->count = 0;
}

void ws_keyset_free(struct ws_keyset *s)
{
    free(s->slots);
    ws_keyset_init(s);
}

void *ws_keyset_get(const struct ws_keyset *s, uint64_t key)
{
    return s->cap ? s->slots[find(&KEYSET, s->slots, s->cap, key)] : NULL;
}

void ws_keyset_add(struct ws_keyset *s, void *rec)
{
    assert(rec);
    s->slots = make_room(&KEYSET, s->slots, &s->cap, s->count);
    void **slot = &s->slots[find(&KEYSET, s->slots, s->cap, keyset_key(&rec))];
    assert(!*slot);
    *slot = rec;
    s->count++;
}

void *ws_keyset_del(struct ws_keyset *s, uint64_t key)
{
    if (!s->cap)
        return NULL;
    size_t i = find(&KEYSET, s->slots, s->cap, key);
    void *rec = s->slots[i];
    if (rec)
        s->slots = remove_at(&KEYSET, s->slots, &s->cap, --s->count, i);
    return rec;
}

static uint64_t seed(void)
{
    static uint64_t s;
    if (!s) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s = mix((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid()) | 1;
    }
    return s;
}

uint64_t ws_hash_bytes(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t h = seed() ^ (n * 0x9e3779b97f4a7c15ull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, b, 8);
        h = mix(h ^ w);
        b += 8;
        n -= 8;
    }
    uint64_t tail = 0;
    memcpy(&tail, b, n);
    return mix(h ^ tail ^ ((uint64_t)n << 56));
}
