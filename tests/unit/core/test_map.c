/* Unit tests for the hash map (src/core/map.c): put/get/del with replacement, growth and shrinking,
 * probe runs that collide and wrap around the end of the table under every order of deletion, a
 * long random run against a plain array (the map, and the keyset that reads its keys from the
 * records), and the byte hash's sensitivity to content and length. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/map.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static void *val(uint64_t k)
{
    return (void *)(uintptr_t)(k * 2 + 1); /* never NULL */
}

/* The slot a key lands in when it is alone in a map of 8 slots: its home there. */
static size_t home8(uint64_t key)
{
    struct ws_map m;
    ws_map_init(&m);
    ws_map_put(&m, key, val(key));
    assert_int_equal(m.cap, 8);
    size_t home = m.cap;
    for (size_t i = 0; i < m.cap; i++)
        if (m.slots[i].value)
            home = i;
    ws_map_free(&m);
    assert_true(home < 8);
    return home;
}

/* n keys (from 1000 up) whose home in 8 slots is home. */
static void keys_homed(uint64_t *out, size_t n, size_t home, uint64_t *next)
{
    for (size_t i = 0; i < n; (*next)++)
        if (home8(*next) == home)
            out[i++] = *next;
}

static void test_empty(void **state)
{
    (void)state;
    struct ws_map m;
    ws_map_init(&m);
    assert_null(ws_map_get(&m, 0));
    assert_null(ws_map_get(&m, UINT64_MAX));
    assert_null(ws_map_del(&m, 42));
    assert_int_equal(m.count, 0);
    ws_map_free(&m);
    ws_map_free(&m); /* twice: init state again */
    assert_null(m.slots);
}

static void test_extreme_keys_and_replace(void **state)
{
    (void)state;
    struct ws_map m;
    ws_map_init(&m);
    ws_map_put(&m, 0, val(0));
    ws_map_put(&m, UINT64_MAX, val(1));
    assert_ptr_equal(ws_map_get(&m, 0), val(0));
    assert_ptr_equal(ws_map_get(&m, UINT64_MAX), val(1));
    ws_map_put(&m, 0, val(7)); /* replaces */
    assert_int_equal(m.count, 2);
    assert_ptr_equal(ws_map_get(&m, 0), val(7));
    assert_ptr_equal(ws_map_del(&m, 0), val(7));
    assert_null(ws_map_get(&m, 0));
    assert_null(ws_map_del(&m, 0));
    assert_ptr_equal(ws_map_get(&m, UINT64_MAX), val(1));
    assert_int_equal(m.count, 1);
    assert_ptr_equal(ws_map_del(&m, UINT64_MAX), val(1));
    assert_int_equal(m.count, 0);
    assert_null(m.slots); /* the last delete frees the table */
    ws_map_free(&m);
}

static void test_growth_and_shrink(void **state)
{
    (void)state;
    enum { N = 100000 };
    struct ws_map m;
    ws_map_init(&m);
    for (uint64_t k = 1; k <= N; k++) {
        ws_map_put(&m, k, val(k));
        assert_true(m.count * 4 <= m.cap * 3); /* never fuller than 3/4 */
    }
    assert_int_equal(m.count, N);
    assert_int_equal(m.cap & (m.cap - 1), 0);
    for (uint64_t k = 1; k <= N; k++)
        assert_ptr_equal(ws_map_get(&m, k), val(k));
    for (uint64_t k = N + 1; k <= N + 1000; k++)
        assert_null(ws_map_get(&m, k));

    /* delete all but 10: the table shrinks and the rest stay findable */
    for (uint64_t k = 11; k <= N; k++)
        assert_ptr_equal(ws_map_del(&m, k), val(k));
    assert_int_equal(m.count, 10);
    assert_true(m.cap <= 128);
    for (uint64_t k = 1; k <= 10; k++)
        assert_ptr_equal(ws_map_get(&m, k), val(k));
    assert_null(ws_map_get(&m, 11));
    ws_map_free(&m);
}

/* Keys a, b, c homed at slot 6 and d, e homed at 0: the run 6,7,0,1,2 wraps around the end and
 * mixes two homes. Deleting in every order must leave every other key findable. */
static void test_collisions_wrap_every_delete_order(void **state)
{
    (void)state;
    uint64_t next = 1000, keys[5];
    keys_homed(keys, 3, 6, &next);
    keys_homed(keys + 3, 2, 0, &next);

    int perm[5] = {0, 1, 2, 3, 4};
    size_t orders = 0;
    for (;;) {
        struct ws_map m;
        ws_map_init(&m);
        for (int i = 0; i < 5; i++)
            ws_map_put(&m, keys[i], val(keys[i]));
        assert_int_equal(m.cap, 8);
        /* the run is 6,7,0,1,2: slots 3..5 stay empty */
        for (size_t i = 3; i <= 5; i++)
            assert_null(m.slots[i].value);
        bool gone[5] = {false};
        for (int step = 0; step < 5; step++) {
            int d = perm[step];
            assert_ptr_equal(ws_map_del(&m, keys[d]), val(keys[d]));
            gone[d] = true;
            for (int i = 0; i < 5; i++) {
                if (gone[i])
                    assert_null(ws_map_get(&m, keys[i]));
                else
                    assert_ptr_equal(ws_map_get(&m, keys[i]), val(keys[i]));
            }
            assert_int_equal(m.count, (size_t)(4 - step));
        }
        ws_map_free(&m);
        orders++;

        /* next permutation */
        int i = 3;
        while (i >= 0 && perm[i] > perm[i + 1])
            i--;
        if (i < 0)
            break;
        int j = 4;
        while (perm[j] < perm[i])
            j--;
        int t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
        for (int a = i + 1, b = 4; a < b; a++, b--) {
            t = perm[a];
            perm[a] = perm[b];
            perm[b] = t;
        }
    }
    assert_int_equal(orders, 120);
}

/* An absent key whose home is inside a full-length run must still end its probe (at the hole). */
static void test_absent_key_in_a_run(void **state)
{
    (void)state;
    uint64_t next = 5000, keys[6], absent;
    keys_homed(keys, 6, 7, &next); /* 6 keys fill 7,0,1,2,3,4: the most 8 slots hold */
    keys_homed(&absent, 1, 7, &next);
    struct ws_map m;
    ws_map_init(&m);
    for (int i = 0; i < 6; i++)
        ws_map_put(&m, keys[i], val(keys[i]));
    assert_int_equal(m.cap, 8);
    assert_null(ws_map_get(&m, absent));
    assert_null(ws_map_del(&m, absent));
    assert_int_equal(m.count, 6);
    /* a seventh key grows the table, and everything survives the rehash */
    ws_map_put(&m, absent, val(absent));
    assert_int_equal(m.cap, 16);
    for (int i = 0; i < 6; i++)
        assert_ptr_equal(ws_map_get(&m, keys[i]), val(keys[i]));
    assert_ptr_equal(ws_map_get(&m, absent), val(absent));
    ws_map_free(&m);
}

static void test_random_against_array(void **state)
{
    (void)state;
    enum { KEYS = 512, ROUNDS = 200000 };
    static void *model[KEYS];
    memset(model, 0, sizeof(model));
    struct ws_map m;
    ws_map_init(&m);
    srand(7);
    size_t count = 0;
    for (int round = 0; round < ROUNDS; round++) {
        /* sparse keys so homes collide often; a skewed mix that fills and drains the map */
        uint64_t idx = (uint64_t)rand() % KEYS;
        uint64_t key = idx * 0x10000 + 3;
        int op = rand() % 10;
        bool filling = (round / 20000) % 2 == 0;
        if (op < (filling ? 6 : 3)) {
            void *v = (void *)(uintptr_t)(((uint64_t)round << 1) | 1);
            if (!model[idx])
                count++;
            model[idx] = v;
            ws_map_put(&m, key, v);
        } else if (op < 8) {
            assert_ptr_equal(ws_map_del(&m, key), model[idx]);
            if (model[idx])
                count--;
            model[idx] = NULL;
        } else {
            assert_ptr_equal(ws_map_get(&m, key), model[idx]);
        }
        assert_int_equal(m.count, count);
        if (round % 5000 == 0)
            for (uint64_t i = 0; i < KEYS; i++)
                assert_ptr_equal(ws_map_get(&m, i * 0x10000 + 3), model[i]);
    }
    ws_map_free(&m);
}

/* The keyset under the same kind of churn, records keyed by their first member: membership
 * against a plain array, the count, growth and shrinking (the table emptied frees its slots). */
static void test_keyset_random_against_array(void **state)
{
    (void)state;
    enum { KEYS = 512, ROUNDS = 200000 };
    static struct rec {
        uint64_t key;
        int other;
    } recs[KEYS];
    static bool in[KEYS];
    memset(in, 0, sizeof(in));
    for (uint64_t i = 0; i < KEYS; i++)
        recs[i].key = i * 0x10000 + 3; /* sparse: homes collide often */
    struct ws_keyset s;
    ws_keyset_init(&s);
    assert_null(ws_keyset_get(&s, 3));
    assert_null(ws_keyset_del(&s, 3));
    srand(11);
    size_t count = 0, max_cap = 0;
    for (int round = 0; round < ROUNDS; round++) {
        uint64_t idx = (uint64_t)rand() % KEYS;
        int op = rand() % 10;
        bool filling = (round / 20000) % 2 == 0;
        if (op < (filling ? 6 : 3)) {
            if (!in[idx]) {
                ws_keyset_add(&s, &recs[idx]);
                in[idx] = true;
                count++;
            }
        } else if (op < 8) {
            assert_ptr_equal(ws_keyset_del(&s, recs[idx].key), in[idx] ? &recs[idx] : NULL);
            if (in[idx])
                count--;
            in[idx] = false;
        } else {
            assert_ptr_equal(ws_keyset_get(&s, recs[idx].key), in[idx] ? &recs[idx] : NULL);
        }
        assert_int_equal(s.count, count);
        assert_true(s.count * 4 <= s.cap * 3);
        if (s.cap > max_cap)
            max_cap = s.cap;
        if (round % 5000 == 0)
            for (uint64_t i = 0; i < KEYS; i++)
                assert_ptr_equal(ws_keyset_get(&s, recs[i].key), in[i] ? &recs[i] : NULL);
    }
    assert_true(max_cap >= 512);
    for (uint64_t i = 0; i < KEYS; i++)
        if (in[i])
            assert_ptr_equal(ws_keyset_del(&s, recs[i].key), &recs[i]);
    assert_int_equal(s.count, 0);
    assert_null(s.slots);
    ws_keyset_free(&s);
}

static void test_hash_bytes(void **state)
{
    (void)state;
    /* same bytes, same hash, wherever they sit in memory */
    char text[80], moved[96];
    for (size_t i = 0; i < sizeof(text); i++)
        text[i] = (char)('a' + i % 26);
    for (size_t shift = 0; shift < 8; shift++) {
        memcpy(moved + shift, text, sizeof(text));
        assert_true(ws_hash_bytes(moved + shift, sizeof(text)) ==
                    ws_hash_bytes(text, sizeof(text)));
    }

    /* every prefix (0..80 bytes: across the 8-byte words) hashes differently */
    uint64_t h[sizeof(text) + 1];
    for (size_t n = 0; n <= sizeof(text); n++) {
        h[n] = ws_hash_bytes(text, n);
        for (size_t k = 0; k < n; k++)
            assert_true(h[k] != h[n]);
    }

    /* trailing and embedded zero bytes count: "a", "a\0", "a\0\0" ... differ */
    const char zeros[16] = "a";
    uint64_t z[16];
    for (size_t n = 1; n <= 16; n++) {
        z[n - 1] = ws_hash_bytes(zeros, n);
        for (size_t k = 1; k < n; k++)
            assert_true(z[k - 1] != z[n - 1]);
    }
    assert_true(ws_hash_bytes("a\0b", 3) != ws_hash_bytes("a\0c", 3));

    /* each single bit flipped in a 24-byte key gives a new hash */
    uint8_t key[24] = {0};
    uint64_t base = ws_hash_bytes(key, sizeof(key));
    for (size_t bit = 0; bit < sizeof(key) * 8; bit++) {
        key[bit / 8] ^= (uint8_t)(1u << (bit % 8));
        assert_true(ws_hash_bytes(key, sizeof(key)) != base);
        key[bit / 8] ^= (uint8_t)(1u << (bit % 8));
    }
    assert_true(ws_hash_bytes(key, sizeof(key)) == base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_extreme_keys_and_replace),
        cmocka_unit_test(test_growth_and_shrink),
        cmocka_unit_test(test_collisions_wrap_every_delete_order),
        cmocka_unit_test(test_absent_key_in_a_run),
        cmocka_unit_test(test_random_against_array),
        cmocka_unit_test(test_keyset_random_against_array),
        cmocka_unit_test(test_hash_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
