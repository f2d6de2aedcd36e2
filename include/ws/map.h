/* Open-addressing hash map from uint64_t keys to pointers (linear probing, backward-shift
 * deletion, no tombstones). Serves the connection registry (id -> conn) and the topic tables.
 * Keys are mixed before use, so sequential ids spread well. Pure. */
#ifndef WS_MAP_H
#define WS_MAP_H

#include <stddef.h>
#include <stdint.h>

struct ws_map_slot {
    uint64_t key;
    void *value; /* NULL marks an empty slot: values are never NULL */
};

struct ws_map {
    struct ws_map_slot *slots; /* owned; NULL while empty */
    size_t cap;                /* a power of two, or 0 */
    size_t count;
};

/* An empty map owning nothing. */
void ws_map_init(struct ws_map *m);

/* Frees the slots (not the values). */
void ws_map_free(struct ws_map *m);

/* The value stored under key, or NULL. */
void *ws_map_get(const struct ws_map *m, uint64_t key);

/* Stores value (not NULL) under key, replacing any earlier value. Aborts on exhaustion. */
void ws_map_put(struct ws_map *m, uint64_t key, void *value);

/* Removes key; returns its value, or NULL when absent. Shrinks when mostly empty. */
void *ws_map_del(struct ws_map *m, uint64_t key);

/* A set of records keyed by their own first member, a uint64_t: the same probing as ws_map in
 * 8-byte slots (a pointer each) instead of 16, for many small records that carry their key
 * (the connection registry). Records are never NULL; keys are unique. */
struct ws_keyset {
    void **slots; /* owned; NULL while empty */
    size_t cap;   /* a power of two, or 0 */
    size_t count;
};

/* An empty set owning nothing. */
void ws_keyset_init(struct ws_keyset *s);

/* Frees the slots (not the records). */
void ws_keyset_free(struct ws_keyset *s);

/* The record whose key is key, or NULL. */
void *ws_keyset_get(const struct ws_keyset *s, uint64_t key);

/* Adds rec (its key must not be in the set). Aborts on exhaustion. */
void ws_keyset_add(struct ws_keyset *s, void *rec);

/* Removes the record whose key is key; returns it, or NULL when absent. Shrinks when mostly
 * empty. */
void *ws_keyset_del(struct ws_keyset *s, uint64_t key);

/* A 64-bit hash of n bytes at p (seeded at start-up, so peers cannot aim for collisions). */
uint64_t ws_hash_bytes(const void *p, size_t n);

#endif
