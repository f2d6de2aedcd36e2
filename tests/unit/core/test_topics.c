/* Unit tests for topics (src/core/topics.c): subscribe/unsubscribe results, names compared by
 * length and bytes (NUL, prefixes, empty), the created/deleted callbacks, leave_all, a walk whose
 * members leave as they are visited, and a long random run of many subscribers and topics
 * checked against a membership matrix. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "ws/topics.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the change callback saw. */
struct changes {
    int created, deleted;
    char last[32];
    size_t last_len;
    bool last_created;
};

static void on_change(void *ctx, const struct ws_topic *topic, bool created)
{
    struct changes *ch = ctx;
    if (created)
        ch->created++;
    else
        ch->deleted++;
    ch->last_created = created;
    ch->last_len = topic->len < sizeof(ch->last) ? topic->len : sizeof(ch->last);
    memcpy(ch->last, topic->name, ch->last_len);
}

static void init_watched(struct ws_topics *t, struct changes *ch)
{
    memset(ch, 0, sizeof(*ch));
    ws_topics_init(t);
    t->on_change = on_change;
    t->ctx = ch;
}

/* A subscriber that belongs to nothing yet (topics know subscribers by address). */
static struct ws_subscriber sub(void)
{
    return (struct ws_subscriber){0};
}

#define SUB(t, s, lit) ws_topics_subscribe(t, s, lit, sizeof(lit) - 1)
#define UNSUB(t, s, lit) ws_topics_unsubscribe(t, s, lit, sizeof(lit) - 1)
#define FIND(t, lit) ws_topics_find(t, lit, sizeof(lit) - 1)

static void test_subscribe_unsubscribe(void **state)
{
    (void)state;
    struct ws_topics t;
    struct changes ch;
    init_watched(&t, &ch);
    struct ws_subscriber a = sub(), b = sub();

    assert_null(FIND(&t, "news"));
    assert_false(ws_topics_has(NULL, &a));
    assert_int_equal(UNSUB(&t, &a, "news"), 0); /* no such topic */

    assert_int_equal(SUB(&t, &a, "news"), 1);
    assert_int_equal(SUB(&t, &a, "news"), 0); /* already */
    assert_int_equal(ch.created, 1);
    struct ws_topic *news = FIND(&t, "news");
    assert_non_null(news);
    assert_int_equal(news->len, 4);
    assert_memory_equal(news->name, "news", 5); /* NUL-terminated copy */
    assert_int_equal(news->nsubs, 1);
    assert_true(ws_topics_has(news, &a));
    assert_false(ws_topics_has(news, &b));
    assert_int_equal(UNSUB(&t, &b, "news"), 0); /* topic exists, b not in it */

    assert_int_equal(SUB(&t, &b, "news"), 1);
    assert_int_equal(ch.created, 1); /* not created twice */
    assert_int_equal(news->nsubs, 2);
    assert_int_equal(t.count, 1);

    assert_int_equal(UNSUB(&t, &a, "news"), 1);
    assert_int_equal(UNSUB(&t, &a, "news"), 0);
    assert_false(ws_topics_has(news, &a));
    assert_true(ws_topics_has(news, &b));
    assert_int_equal(ch.deleted, 0);
    assert_int_equal(ws_subscriber_count(&a), 0);

    assert_int_equal(UNSUB(&t, &b, "news"), 1); /* the last one: the topic goes */
    assert_int_equal(ch.deleted, 1);
    assert_false(ch.last_created);
    assert_memory_equal(ch.last, "news", 4); /* still readable in the callback */
    assert_null(FIND(&t, "news"));
    assert_int_equal(t.count, 0);

    /* back again: a new topic, told again */
    assert_int_equal(SUB(&t, &b, "news"), 1);
    assert_int_equal(ch.created, 2);
    assert_true(ch.last_created);
    assert_int_equal(t.count, 1);
    ws_topics_leave_all(&t, &b);
    ws_topics_leave_all(&t, &a);
    assert_int_equal(t.count, 0);
    ws_topics_free(&t);
}

static void test_names_by_length_and_bytes(void **state)
{
    (void)state;
    struct ws_topics t;
    struct changes ch;
    init_watched(&t, &ch);
    struct ws_subscriber a = sub();
    /* all distinct: a name is its bytes and its length, NULs included */
    static const struct {
        const char *p;
        size_t n;
    } names[] = {{"", 0},     {"a", 1},  {"a\0", 2}, {"a\0b", 3},
                 {"a\0c", 3}, {"ab", 2}, {"A", 1},   {"\xff\xfe", 2}};
    size_t n = sizeof(names) / sizeof(names[0]);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(ws_topics_subscribe(&t, &a, names[i].p, names[i].n), 1);
    assert_int_equal(t.count, n);
    assert_int_equal(ws_subscriber_count(&a), n);
    for (size_t i = 0; i < n; i++) {
        struct ws_topic *x = ws_topics_find(&t, names[i].p, names[i].n);
        assert_non_null(x);
        assert_int_equal(x->len, names[i].n);
        assert_memory_equal(x->name, names[i].p, names[i].n);
        assert_true(ws_topics_has(x, &a));
        assert_ptr_equal(ws_subscriber_topic(&a, i),
                         x); /* the subscriber lists them as subscribed */
    }
    assert_null(ws_topics_find(&t, "a\0d", 3));
    assert_null(ws_topics_find(&t, "abc", 3));

    /* leaving one keeps the others and the subscriber's order */
    assert_int_equal(ws_topics_unsubscribe(&t, &a, "a\0", 2), 1);
    assert_null(ws_topics_find(&t, "a\0", 2));
    assert_non_null(ws_topics_find(&t, "a", 1));
    assert_non_null(ws_topics_find(&t, "a\0b", 3));
    assert_int_equal(ws_subscriber_count(&a), n - 1);
    for (size_t i = 0, k = 0; i < n; i++) {
        if (i == 2)
            continue;
        assert_ptr_equal(ws_subscriber_topic(&a, k++), ws_topics_find(&t, names[i].p, names[i].n));
    }
    ws_topics_leave_all(&t, &a);
    assert_int_equal(t.count, 0);
    assert_int_equal(ch.created, (int)n);
    assert_int_equal(ch.deleted, (int)n);
    ws_topics_free(&t);
}

static void test_leave_all(void **state)
{
    (void)state;
    struct ws_topics t;
    struct changes ch;
    init_watched(&t, &ch);
    struct ws_subscriber a = sub(), b = sub();
    char name[16];
    for (int i = 0; i < 10; i++) {
        int n = snprintf(name, sizeof(name), "t%d", i);
        assert_int_equal(ws_topics_subscribe(&t, &a, name, (size_t)n), 1);
        if (i % 3 == 0)
            assert_int_equal(ws_topics_subscribe(&t, &b, name, (size_t)n), 1);
    }
    assert_int_equal(t.count, 10);
    ws_topics_leave_all(&t, &a);
    assert_null(a.list);
    assert_int_equal(ws_subscriber_count(&a), 0);
    assert_int_equal(t.count, 4); /* t0, t3, t6, t9 keep b */
    assert_int_equal(ch.deleted, 6);
    for (int i = 0; i < 10; i++) {
        int n = snprintf(name, sizeof(name), "t%d", i);
        struct ws_topic *x = ws_topics_find(&t, name, (size_t)n);
        if (i % 3 == 0) {
            assert_non_null(x);
            assert_int_equal(x->nsubs, 1);
            assert_ptr_equal(x->subs[0], &b);
            assert_false(ws_topics_has(x, &a));
        } else {
            assert_null(x);
        }
    }
    ws_topics_leave_all(&t, &a); /* nothing left: a no-op */
    assert_int_equal(t.count, 4);
    /* a subscriber that left may come back */
    assert_int_equal(SUB(&t, &a, "t0"), 1);
    assert_int_equal(FIND(&t, "t0")->nsubs, 2);
    ws_topics_leave_all(&t, &a);
    ws_topics_leave_all(&t, &b);
    assert_int_equal(t.count, 0);
    assert_int_equal(ch.created, ch.deleted);
    ws_topics_free(&t);
}

/* Members removed in an arbitrary order: the swap with the last element keeps every remaining
 * member findable, listed once, and at the position its index claims. */
static void test_members_leave_in_any_order(void **state)
{
    (void)state;
    enum { N = 200 };
    static struct ws_subscriber s[N];
    struct ws_topics t;
    ws_topics_init(&t);
    for (int i = 0; i < N; i++) {
        s[i] = sub();
        assert_int_equal(SUB(&t, &s[i], "room"), 1);
    }
    struct ws_topic *room = FIND(&t, "room");
    int order[N];
    for (int i = 0; i < N; i++)
        order[i] = i;
    srand(3);
    for (int i = N - 1; i > 0; i--) {
        int j = rand() % (i + 1);
        int x = order[i];
        order[i] = order[j];
        order[j] = x;
    }
    bool in[N];
    for (int i = 0; i < N; i++)
        in[i] = true;
    for (int k = 0; k < N - 1; k++) {
        assert_int_equal(UNSUB(&t, &s[order[k]], "room"), 1);
        in[order[k]] = false;
        assert_int_equal(room->nsubs, (size_t)(N - k - 1));
        int seen[N] = {0};
        for (size_t p = 0; p < room->nsubs; p++) {
            int idx = (int)(room->subs[p] - s);
            assert_true(idx >= 0 && idx < N);
            assert_true(in[idx]);
            seen[idx]++;
        }
        for (int i = 0; i < N; i++) {
            assert_int_equal(seen[i], in[i] ? 1 : 0);
            assert_int_equal(ws_topics_has(room, &s[i]), in[i]);
        }
    }
    assert_int_equal(UNSUB(&t, &s[order[N - 1]], "room"), 1);
    assert_null(FIND(&t, "room"));
    assert_int_equal(t.count, 0);
    ws_topics_free(&t);
}

/* A delivery walk in which each visited member leaves (as a closing connection would): walking
 * from the end visits everyone once, and the topic goes with its last member. */
static void test_walk_while_members_leave(void **state)
{
    (void)state;
    enum { N = 50 };
    static struct ws_subscriber s[N];
    struct ws_topics t;
    struct changes ch;
    init_watched(&t, &ch);
    for (int i = 0; i < N; i++) {
        s[i] = sub();
        assert_int_equal(SUB(&t, &s[i], "all"), 1);
        assert_int_equal(SUB(&t, &s[i], "other"), 1);
    }
    struct ws_topic *all = FIND(&t, "all");
    int visits[N] = {0};
    for (size_t i = all->nsubs; i-- > 0;) {
        struct ws_subscriber *m = all->subs[i];
        visits[m - s]++;
        if ((m - s) % 2) /* odd ones leave the topic, even ones close (leave everything) */
            assert_int_equal(UNSUB(&t, m, "all"), 1);
        else
            ws_topics_leave_all(&t, m);
    }
    for (int i = 0; i < N; i++)
        assert_int_equal(visits[i], 1);
    assert_null(FIND(&t, "all"));
    struct ws_topic *other = FIND(&t, "other");
    assert_non_null(other);
    assert_int_equal(other->nsubs, N / 2);
    for (int i = 0; i < N; i++)
        assert_int_equal(ws_topics_has(other, &s[i]), (i % 2) == 1);
    for (int i = 0; i < N; i++)
        ws_topics_leave_all(&t, &s[i]);
    assert_int_equal(t.count, 0);
    assert_int_equal(ch.created, 2);
    assert_int_equal(ch.deleted, 2);
    ws_topics_free(&t);
}

/* Many subscribers and topics under random subscribe, unsubscribe and leave_all, against a
 * membership matrix: results, counts on both sides, and the created/deleted balance. */
static void test_many_against_matrix(void **state)
{
    (void)state;
    enum { SUBS = 300, TOPICS = 120, ROUNDS = 60000 };
    static struct ws_subscriber s[SUBS];
    static bool member[SUBS][TOPICS];
    memset(member, 0, sizeof(member));
    struct ws_topics t;
    struct changes ch;
    init_watched(&t, &ch);
    for (int i = 0; i < SUBS; i++)
        s[i] = sub();
    srand(5);
    char name[16];
    for (int round = 0; round < ROUNDS; round++) {
        int i = rand() % SUBS, k = rand() % TOPICS, op = rand() % 100;
        int n = snprintf(name, sizeof(name), "topic/%d", k);
        if (op < 55) {
            assert_int_equal(ws_topics_subscribe(&t, &s[i], name, (size_t)n), !member[i][k]);
            member[i][k] = true;
        } else if (op < 98) {
            assert_int_equal(ws_topics_unsubscribe(&t, &s[i], name, (size_t)n), member[i][k]);
            member[i][k] = false;
        } else {
            ws_topics_leave_all(&t, &s[i]);
            memset(member[i], 0, sizeof(member[i]));
        }
        if (round % 2000 == 0 || round == ROUNDS - 1) {
            size_t live = 0;
            for (int kk = 0; kk < TOPICS; kk++) {
                int nn = snprintf(name, sizeof(name), "topic/%d", kk);
                struct ws_topic *x = ws_topics_find(&t, name, (size_t)nn);
                size_t members = 0;
                for (int ii = 0; ii < SUBS; ii++) {
                    members += member[ii][kk];
                    assert_int_equal(ws_topics_has(x, &s[ii]), member[ii][kk]);
                }
                if (members) {
                    assert_non_null(x);
                    assert_int_equal(x->nsubs, members);
                    /* the array holds exactly the members (nsubs of them, so each once) */
                    for (size_t p = 0; p < x->nsubs; p++) {
                        int ii = (int)(x->subs[p] - s);
                        assert_true(ii >= 0 && ii < SUBS && member[ii][kk]);
                        assert_true(x->subs[p]->list != NULL);
                    }
                    live++;
                } else {
                    assert_null(x);
                }
            }
            assert_int_equal(t.count, live);
            assert_int_equal((size_t)(ch.created - ch.deleted), live);
            for (int ii = 0; ii < SUBS; ii++) {
                uint32_t mine = 0;
                for (int kk = 0; kk < TOPICS; kk++)
                    mine += member[ii][kk];
                assert_int_equal(ws_subscriber_count(&s[ii]), mine);
            }
        }
    }
    for (int i = 0; i < SUBS; i++)
        ws_topics_leave_all(&t, &s[i]);
    assert_int_equal(t.count, 0);
    assert_int_equal(ch.created, ch.deleted);
    ws_topics_free(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_subscribe_unsubscribe),
        cmocka_unit_test(test_names_by_length_and_bytes),
        cmocka_unit_test(test_leave_all),
        cmocka_unit_test(test_members_leave_in_any_order),
        cmocka_unit_test(test_walk_while_members_leave),
        cmocka_unit_test(test_many_against_matrix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
