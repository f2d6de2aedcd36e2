/* Unit tests for the connection registry (src/core/registry.c): arrival order kept through
 * removals at the head, middle and tail, lookups by id before and after removal, the count, a
 * walk that removes the node it stands on, and a long churn against a reference array. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/registry.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

/* A node's owner, as a connection embeds it. */
struct owner {
    int tag;
    struct ws_registry_node node;
};

static struct owner *owner_of(struct ws_registry_node *n)
{
    return (struct owner *)((char *)n - offsetof(struct owner, node));
}

/* Checks the walk from head and from tail both give exactly ids[0..n), and the count. */
static void expect_order(const struct ws_registry *r, const uint64_t *ids, size_t n)
{
    assert_int_equal(r->count, n);
    size_t i = 0;
    const struct ws_registry_node *prev = NULL;
    for (const struct ws_registry_node *x = r->head; x; x = x->next, i++) {
        assert_true(i < n);
        assert_int_equal(x->id, ids[i]);
        assert_ptr_equal(x->prev, prev);
        prev = x;
    }
    assert_int_equal(i, n);
    assert_ptr_equal(r->tail, prev);
    for (const struct ws_registry_node *x = r->tail; x; x = x->prev)
        assert_int_equal(x->id, ids[--i]);
    assert_int_equal(i, 0);
}

static void test_empty(void **state)
{
    (void)state;
    struct ws_registry r;
    ws_registry_init(&r);
    expect_order(&r, NULL, 0);
    assert_null(r.head);
    assert_null(ws_registry_get(&r, 1));
    assert_null(ws_registry_get(&r, 0));
    ws_registry_free(&r);
}

static void test_add_get_order(void **state)
{
    (void)state;
    struct owner o[5];
    struct ws_registry r;
    ws_registry_init(&r);
    /* ids need not arrive sorted: the order is arrival, not id */
    const uint64_t ids[5] = {7, 3, 1000000000000ull, 1, 42};
    for (int i = 0; i < 5; i++) {
        o[i].tag = i;
        o[i].node.id = ids[i];
        o[i].node.prev = o[i].node.next = (void *)&o[i]; /* garbage: add must overwrite it */
        ws_registry_add(&r, &o[i].node);
        expect_order(&r, ids, (size_t)i + 1);
    }
    for (int i = 0; i < 5; i++) {
        struct ws_registry_node *n = ws_registry_get(&r, ids[i]);
        assert_ptr_equal(n, &o[i].node);
        assert_int_equal(owner_of(n)->tag, i);
    }
    assert_null(ws_registry_get(&r, 2));
    ws_registry_free(&r);
    assert_int_equal(r.count, 0);
    assert_null(r.head);
}

static void test_remove_head_middle_tail(void **state)
{
    (void)state;
    struct owner o[6];
    struct ws_registry r;
    ws_registry_init(&r);
    for (int i = 0; i < 6; i++) {
        o[i].node.id = (uint64_t)i + 1;
        ws_registry_add(&r, &o[i].node);
    }
    ws_registry_remove(&r, &o[0].node); /* head */
    expect_order(&r, (const uint64_t[]){2, 3, 4, 5, 6}, 5);
    ws_registry_remove(&r, &o[5].node); /* tail */
    expect_order(&r, (const uint64_t[]){2, 3, 4, 5}, 4);
    ws_registry_remove(&r, &o[2].node); /* middle */
    expect_order(&r, (const uint64_t[]){2, 4, 5}, 3);
    assert_null(ws_registry_get(&r, 1));
    assert_null(ws_registry_get(&r, 3));
    assert_null(ws_registry_get(&r, 6));
    assert_null(o[2].node.prev);
    assert_null(o[2].node.next);

    /* a later arrival goes to the tail even after the tail was removed */
    o[0].node.id = 7; /* ids are never reused: a fresh one */
    ws_registry_add(&r, &o[0].node);
    expect_order(&r, (const uint64_t[]){2, 4, 5, 7}, 4);

    ws_registry_remove(&r, &o[1].node);
    ws_registry_remove(&r, &o[3].node);
    ws_registry_remove(&r, &o[4].node);
    ws_registry_remove(&r, &o[0].node);
    expect_order(&r, NULL, 0);
    assert_null(r.head);
    assert_null(r.tail);

    /* empty again: usable as new */
    o[5].node.id = 8;
    ws_registry_add(&r, &o[5].node);
    expect_order(&r, (const uint64_t[]){8}, 1);
    ws_registry_remove(&r, &o[5].node);
    ws_registry_free(&r);
}

/* The walk used by broadcasts and shutdown: take next before acting on the node, so the node
 * itself may leave. Every other node is removed as it is visited. */
static void test_remove_while_walking(void **state)
{
    (void)state;
    enum { N = 100 };
    static struct owner o[N];
    struct ws_registry r;
    ws_registry_init(&r);
    for (int i = 0; i < N; i++) {
        o[i].tag = i;
        o[i].node.id = (uint64_t)i + 1;
        ws_registry_add(&r, &o[i].node);
    }
    int visited = 0;
    for (struct ws_registry_node *x = r.head, *next; x; x = next) {
        next = x->next;
        assert_int_equal(owner_of(x)->tag, visited);
        if (visited % 2 == 0)
            ws_registry_remove(&r, x);
        visited++;
    }
    assert_int_equal(visited, N);
    uint64_t left[N / 2];
    for (int i = 0; i < N / 2; i++)
        left[i] = (uint64_t)(2 * i + 2);
    expect_order(&r, left, N / 2);

    /* and a walk that empties it */
    for (struct ws_registry_node *x = r.head, *next; x; x = next) {
        next = x->next;
        ws_registry_remove(&r, x);
    }
    expect_order(&r, NULL, 0);
    ws_registry_free(&r);
}

/* Connections come and go at random: order and lookups match an array kept by hand. */
static void test_churn(void **state)
{
    (void)state;
    enum { SLOTS = 300, ROUNDS = 50000 };
    static struct owner o[SLOTS];
    static bool in[SLOTS];
    static uint64_t order[SLOTS];
    memset(in, 0, sizeof(in));
    size_t n = 0;
    uint64_t next_id = 1;
    struct ws_registry r;
    ws_registry_init(&r);
    srand(11);
    for (int round = 0; round < ROUNDS; round++) {
        int s = rand() % SLOTS;
        if (!in[s]) {
            o[s].tag = s;
            o[s].node.id = next_id++;
            ws_registry_add(&r, &o[s].node);
            in[s] = true;
            order[n++] = o[s].node.id;
        } else {
            uint64_t id = o[s].node.id;
            assert_ptr_equal(ws_registry_get(&r, id), &o[s].node);
            ws_registry_remove(&r, &o[s].node);
            assert_null(ws_registry_get(&r, id));
            in[s] = false;
            size_t k = 0;
            while (order[k] != id)
                k++;
            memmove(&order[k], &order[k + 1], (n - k - 1) * sizeof(order[0]));
            n--;
        }
        if (round % 1000 == 0)
            expect_order(&r, order, n);
    }
    expect_order(&r, order, n);
    for (int s = 0; s < SLOTS; s++)
        if (in[s])
            ws_registry_remove(&r, &o[s].node);
    expect_order(&r, NULL, 0);
    ws_registry_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_add_get_order),
        cmocka_unit_test(test_remove_head_middle_tail),
        cmocka_unit_test(test_remove_while_walking),
        cmocka_unit_test(test_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
