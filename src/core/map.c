/* The hash map and the seeded byte hash. Backward-shift deletion keeps probe sequences short
 * without tombstones, so a map under churn (connections coming and going) never degrades. */
#include "ws/map.h"

#include "ws/buf.h"

#include <assert.h>
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

static size_t find(const struct ws_map *m, uint64_t key)
{
    size_t mask = m->cap - 1;
    size_t i = (size_t)mix(key) & mask;
    while (m->slots[i].value && m->slots[i].key != key)
        i = (i + 1) & mask;
    return i;
}

void *ws_map_get(const struct ws_map *m, uint64_t key)
{
    if (!m->cap)
        return NULL;
    return m->slots[find(m, key)].value;
}

static void resize(struct ws_map *m, size_t cap)
{
    struct ws_map_slot *old = m->slots;
    size_t old_cap = m->cap;
    m->slots = ws_xcalloc(cap, sizeof(*m->slots));
    m->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].value)
            m->slots[find(m, old[i].key)] = old[i];
    free(old);
}

void ws_map_put(struct ws_map *m, uint64_t key, void *value)
{
    assert(value);
    if ((m->count + 1) * 4 > m->cap * 3)
        resize(m, m->cap ? m->cap * 2 : 8);
    size_t i = find(m, key);
    if (!m->slots[i].value)
        m->count++;
    m->slots[i].key = key;
    m->slots[i].value = value;
}

void *ws_map_del(struct ws_map *m, uint64_t key)
{
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1;
    size_t i = find(m, key);
    void *value = m->slots[i].value;
    if (!value)
        return NULL;
    /* Backward shift: pull later members of the probe run into the hole. */
    size_t hole = i;
    for (size_t j = (i + 1) & mask; m->slots[j].value; j = (j + 1) & mask) {
        size_t home = (size_t)mix(m->slots[j].key) & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            m->slots[hole] = m->slots[j];
            hole = j;
        }
    }
    m->slots[hole].value = NULL;
    m->count--;
    if (m->count == 0)
        ws_map_free(m);
    else if (m->cap > 64 && m->count * 8 < m->cap)
        resize(m, m->cap / 2);
    return value;
}

/* ---- ws_keyset: the same table with the key read from the record ---- */

static uint64_t key_of(const void *rec)
{
    uint64_t k;
    memcpy(&k, rec, sizeof(k));
    return k;
}

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

static size_t keyset_find(const struct ws_keyset *s, uint64_t key)
{
    size_t mask = s->cap - 1;
    size_t i = (size_t)mix(key) & mask;
    while (s->slots[i] && key_of(s->slots[i]) != key)
        i = (i + 1) & mask;
    return i;
}

void *ws_keyset_get(const struct ws_keyset *s, uint64_t key)
{
    return s->cap ? s->slots[keyset_find(s, key)] : NULL;
}

static void keyset_resize(struct ws_keyset *s, size_t cap)
{
    void **old = s->slots;
    size_t old_cap = s->cap;
    s->slots = ws_xcalloc(cap, sizeof(*s->slots));
    s->cap = cap;
    for (size_t i = 0; i < old_cap; i++)
        if (old[i])
            s->slots[keyset_find(s, key_of(old[i]))] = old[i];
    free(old);
}

void ws_keyset_add(struct ws_keyset *s, void *rec)
{
    assert(rec);
    if ((s->count + 1) * 4 > s->cap * 3)
        keyset_resize(s, s->cap ? s->cap * 2 : 8);
    size_t i = keyset_find(s, key_of(rec));
    assert(!s->slots[i]);
    s->slots[i] = rec;
    s->count++;
}

void *ws_keyset_del(struct ws_keyset *s, uint64_t key)
{
    if (!s->cap)
        return NULL;
    size_t mask = s->cap - 1;
    size_t i = keyset_find(s, key);
    void *rec = s->slots[i];
    if (!rec)
        return NULL;
    size_t hole = i; /* backward shift, as in ws_map_del */
    for (size_t j = (i + 1) & mask; s->slots[j]; j = (j + 1) & mask) {
        size_t home = (size_t)mix(key_of(s->slots[j])) & mask;
        if (((j - home) & mask) >= ((j - hole) & mask)) {
            s->slots[hole] = s->slots[j];
            hole = j;
        }
    }
    s->slots[hole] = NULL;
    s->count--;
    if (s->count == 0)
        ws_keyset_free(s);
    else if (s->cap > 64 && s->count * 8 < s->cap)
        keyset_resize(s, s->cap / 2);
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
