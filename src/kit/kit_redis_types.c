/* The hash, list and set commands of the kit's in-memory Redis (kit_redis_db.c holds the keys
 * and runs the commands): Redis's reply shapes and error texts, an empty aggregate being no
 * key, as in Redis. */
#include "kit_redis.h"

#include "ws/buf.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- shared ---- */

/* HDEL and SREM: removes the fields (step 2) or members (step 1) named after the key. */
static void remove_named(struct kit_rcmd *c, enum kit_rtype type, size_t step)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, type, &bad);
    if (bad)
        return;
    long long n = 0;
    for (size_t i = 2; k && i < c->argc; i++) {
        size_t at = kit_rdb_find_item(k, &c->argv[i], step);
        if (at != SIZE_MAX) {
            kit_rdb_remove(k, at, step);
            n++;
        }
    }
    kit_rdb_drop_if_empty(c, k);
    kit_rdb_int(c->out, n);
}

/* HLEN, LLEN, SCARD: the items, per entry (a hash's are field and value). */
static void count(struct kit_rcmd *c, enum kit_rtype type, size_t per)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, type, &bad);
    if (!bad)
        kit_rdb_int(c->out, k ? (long long)(k->n / per) : 0);
}

static void c_hdel(struct kit_rcmd *c)
{
    remove_named(c, KIT_R_HASH, 2);
}

static void c_srem(struct kit_rcmd *c)
{
    remove_named(c, KIT_R_SET, 1);
}

static void c_hlen(struct kit_rcmd *c)
{
    count(c, KIT_R_HASH, 2);
}

static void c_llen(struct kit_rcmd *c)
{
    count(c, KIT_R_LIST, 1);
}

static void c_scard(struct kit_rcmd *c)
{
    count(c, KIT_R_SET, 1);
}

/* ---- hashes ---- */

static void c_hset(struct kit_rcmd *c)
{
    if (c->argc % 2 != 0) {
        kit_rdb_error(c->out, "ERR wrong number of arguments for '%s' command",
                      kit_rdb_is(&c->argv[0], "HMSET") ? "hmset" : "hset");
        return;
    }
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_HASH, &bad);
    if (bad)
        return;
    if (!k)
        k = kit_rdb_create(c, 1, KIT_R_HASH);
    long long added = 0;
    for (size_t i = 2; i < c->argc; i += 2) {
        size_t at = kit_rdb_find_item(k, &c->argv[i], 2);
        if (at != SIZE_MAX) {
            free(k->items[at + 1].p);
            k->items[at + 1] = kit_rdb_dup(c->argv[i + 1].p, c->argv[i + 1].n);
            continue;
        }
        kit_rdb_insert(k, k->n, c->argv[i].p, c->argv[i].n);
        kit_rdb_insert(k, k->n, c->argv[i + 1].p, c->argv[i + 1].n);
        added++;
    }
    if (kit_rdb_is(&c->argv[0], "HMSET"))
        kit_rdb_ok(c->out);
    else
        kit_rdb_int(c->out, added);
}

static void c_hget(struct kit_rcmd *c)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_HASH, &bad);
    size_t at = k ? kit_rdb_find_item(k, &c->argv[2], 2) : SIZE_MAX;
    if (at != SIZE_MAX)
        kit_rdb_reply(c->out, WS_REDIS_STRING, k->items[at + 1].p, k->items[at + 1].n);
    else if (!bad)
        c->out->kind = WS_REDIS_NIL;
}

static void c_hgetall(struct kit_rcmd *c)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_HASH, &bad);
    if (bad)
        return;
    size_t n = k ? k->n : 0;
    struct ws_redis_value *el = kit_rdb_array(c->out, n);
    for (size_t i = 0; i < n; i++)
        kit_rdb_reply(&el[i], WS_REDIS_STRING, k->items[i].p, k->items[i].n);
}

static void c_hincrby(struct kit_rcmd *c)
{
    long long by, sum;
    if (!kit_rdb_arg_ll(c, 3, &by))
        return;
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_HASH, &bad);
    if (bad)
        return;
    bool made = !k;
    if (made)
        k = kit_rdb_create(c, 1, KIT_R_HASH);
    size_t at = kit_rdb_find_item(k, &c->argv[2], 2);
    struct kit_rstr none = {NULL, 0};
    if (!kit_rdb_add_ll(c, at != SIZE_MAX ? &k->items[at + 1] : &none, by,
                        "ERR hash value is not an integer", &sum)) {
        if (made)
            kit_rdb_delete(c, k);
        return;
    }
    if (at == SIZE_MAX) {
        kit_rdb_insert(k, k->n, c->argv[2].p, c->argv[2].n);
        kit_rdb_insert(k, k->n, none.p, none.n);
        free(none.p);
    }
    kit_rdb_int(c->out, sum);
}

/* ---- lists ---- */

static void push(struct kit_rcmd *c, bool left)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_LIST, &bad);
    if (bad)
        return;
    if (!k)
        k = kit_rdb_create(c, 1, KIT_R_LIST);
    for (size_t i = 2; i < c->argc; i++)
        kit_rdb_insert(k, left ? 0 : k->n, c->argv[i].p, c->argv[i].n);
    kit_rdb_int(c->out, (long long)k->n);
}

static void c_lpush(struct kit_rcmd *c)
{
    push(c, true);
}

static void c_rpush(struct kit_rcmd *c)
{
    push(c, false);
}

/* LPOP/RPOP key [count]: one element (or nil), or with a count an array (or a nil array). */
static void pop(struct kit_rcmd *c, bool left)
{
    long long count = 1;
    if (c->argc == 3 && (!kit_rdb_to_ll(&c->argv[2], &count) || count < 0)) {
        kit_rdb_error(c->out, "ERR value is out of range, must be positive");
        return;
    }
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_LIST, &bad);
    if (bad)
        return;
    if (!k) {
        c->out->kind = WS_REDIS_NIL;
        return;
    }
    size_t n = (size_t)count < k->n ? (size_t)count : k->n;
    struct ws_redis_value *el = c->argc == 3 ? kit_rdb_array(c->out, n) : c->out;
    for (size_t i = 0; i < n; i++) {
        const struct kit_rstr *s = &k->items[left ? i : k->n - 1 - i];
        kit_rdb_reply(&el[i], WS_REDIS_STRING, s->p, s->n);
    }
    kit_rdb_remove(k, left ? 0 : k->n - n, n);
    kit_rdb_drop_if_empty(c, k);
}

static void c_lpop(struct kit_rcmd *c)
{
    pop(c, true);
}

static void c_rpop(struct kit_rcmd *c)
{
    pop(c, false);
}

/* The list of LRANGE and LTRIM (argv[1]) and the part start..stop (argv[2], argv[3]) picks as
 * Redis reads them: negative from the end, clamped. Returns -1 with the reply made (not an
 * integer, the wrong type), 0 when the part is empty (*k NULL when there is no list), 1 else. */
static int list_part(struct kit_rcmd *c, struct kit_rkey **k, size_t *from, size_t *to)
{
    long long start, stop;
    bool bad;
    if (!kit_rdb_arg_ll(c, 2, &start) || !kit_rdb_arg_ll(c, 3, &stop))
        return -1;
    *k = kit_rdb_find_typed(c, 1, KIT_R_LIST, &bad);
    if (bad)
        return -1;
    long long len = *k ? (long long)(*k)->n : 0;
    if (start < 0)
        start = len + start < 0 ? 0 : len + start;
    if (stop < 0)
        stop = len + stop;
    if (stop >= len)
        stop = len - 1;
    if (start > stop || start >= len)
        return 0;
    *from = (size_t)start;
    *to = (size_t)stop;
    return 1;
}

static void c_lrange(struct kit_rcmd *c)
{
    struct kit_rkey *k;
    size_t from = 0, to = 0;
    int part = list_part(c, &k, &from, &to);
    if (part < 0)
        return;
    struct ws_redis_value *el = kit_rdb_array(c->out, part ? to - from + 1 : 0);
    for (size_t i = from; part && i <= to; i++)
        kit_rdb_reply(&el[i - from], WS_REDIS_STRING, k->items[i].p, k->items[i].n);
}

static void c_ltrim(struct kit_rcmd *c)
{
    struct kit_rkey *k;
    size_t from = 0, to = 0;
    int part = list_part(c, &k, &from, &to);
    if (part < 0)
        return;
    if (part) {
        kit_rdb_remove(k, to + 1, k->n - to - 1);
        kit_rdb_remove(k, 0, from);
    } else if (k) {
        kit_rdb_remove(k, 0, k->n);
    }
    kit_rdb_drop_if_empty(c, k);
    kit_rdb_ok(c->out);
}

/* ---- sets ---- */

static void c_sadd(struct kit_rcmd *c)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_SET, &bad);
    if (bad)
        return;
    if (!k)
        k = kit_rdb_create(c, 1, KIT_R_SET);
    long long n = 0;
    for (size_t i = 2; i < c->argc; i++)
        if (kit_rdb_find_item(k, &c->argv[i], 1) == SIZE_MAX) {
            kit_rdb_insert(k, k->n, c->argv[i].p, c->argv[i].n);
            n++;
        }
    kit_rdb_int(c->out, n);
}

static void c_smembers(struct kit_rcmd *c)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_SET, &bad);
    if (bad)
        return;
    size_t n = k ? k->n : 0;
    struct kit_rstr *list = ws_xcalloc(n + 1, sizeof(*list));
    if (n)
        memcpy(list, k->items, n * sizeof(*list));
    kit_rdb_sorted(c->out, list, n);
    free(list);
}

static void c_sismember(struct kit_rcmd *c)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_SET, &bad);
    if (!bad)
        kit_rdb_int(c->out, k && kit_rdb_find_item(k, &c->argv[2], 1) != SIZE_MAX);
}

const struct kit_rdb_command kit_rdb_aggregates[] = {
    {"HSET", -4, 0, c_hset},        {"HMSET", -4, 0, c_hset},
    {"HGET", 3, 0, c_hget},         {"HDEL", -3, 0, c_hdel},
    {"HGETALL", 2, 0, c_hgetall},   {"HLEN", 2, 0, c_hlen},
    {"HINCRBY", 4, 0, c_hincrby},   {"LPUSH", -3, 0, c_lpush},
    {"RPUSH", -3, 0, c_rpush},      {"LPOP", -2, 3, c_lpop},
    {"RPOP", -2, 3, c_rpop},        {"LRANGE", 4, 0, c_lrange},
    {"LTRIM", 4, 0, c_ltrim},       {"LLEN", 2, 0, c_llen},
    {"SADD", -3, 0, c_sadd},        {"SREM", -3, 0, c_srem},
    {"SMEMBERS", 2, 0, c_smembers}, {"SISMEMBER", 3, 0, c_sismember},
    {"SCARD", 2, 0, c_scard},       {NULL, 0, 0, NULL},
};
