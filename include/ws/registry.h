/* The connection registry: id -> node in O(1) and iteration in arrival order. Nodes are embedded
 * in their owner (the connection); the registry never allocates or frees them. */
#ifndef WS_REGISTRY_H
#define WS_REGISTRY_H

#include "ws/map.h"

#include <stddef.h>
#include <stdint.h>

struct ws_registry_node {
    uint64_t id; /* first: the key of the registry's ws_keyset */
    struct ws_registry_node *prev, *next;
};

struct ws_registry {
    struct ws_keyset by_id;
    struct ws_registry_node *head, *tail;
    size_t count;
};

void ws_registry_init(struct ws_registry *r);
void ws_registry_free(struct ws_registry *r);

/* Adds node under node->id (ids are unique and never reused). */
void ws_registry_add(struct ws_registry *r, struct ws_registry_node *node);

/* Removes node; a node not in the registry is a bug. */
void ws_registry_remove(struct ws_registry *r, struct ws_registry_node *node);

/* The node with id, or NULL. */
struct ws_registry_node *ws_registry_get(const struct ws_registry *r, uint64_t id);

#endif
