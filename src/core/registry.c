/* Registry: a hash set of the nodes (keyed by their id) for lookups plus an intrusive list for
 * ordered iteration. */
#include "ws/registry.h"

#include <assert.h>

void ws_registry_init(struct ws_registry *r)
{
    ws_keyset_init(&r->by_id);
    r->head = r->tail = NULL;
    r->count = 0;
}

void ws_registry_free(struct ws_registry *r)
{
    ws_keyset_free(&r->by_id);
    r->head = r->tail = NULL;
    r->count = 0;
}

void ws_registry_add(struct ws_registry *r, struct ws_registry_node *node)
{
    ws_keyset_add(&r->by_id, node);
    node->next = NULL;
    node->prev = r->tail;
    if (r->tail)
        r->tail->next = node;
    else
        r->head = node;
    r->tail = node;
    r->count++;
}

void ws_registry_remove(struct ws_registry *r, struct ws_registry_node *node)
{
    void *removed = ws_keyset_del(&r->by_id, node->id);
    assert(removed == node);
    (void)removed;
    if (node->prev)
        node->prev->next = node->next;
    else
        r->head = node->next;
    if (node->next)
        node->next->prev = node->prev;
    else
        r->tail = node->prev;
    node->prev = node->next = NULL;
    r->count--;
}

struct ws_registry_node *ws_registry_get(const struct ws_registry *r, uint64_t id)
{
    return ws_keyset_get(&r->by_id, id);
}
