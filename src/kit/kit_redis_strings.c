/* The string and key commands of the kit's in-memory Redis (GET, SET, INCR, EXPIRE, TTL, ...):
 * Redis's reply shapes and error texts, expiries in milliseconds on the caller's clock.
 * kit_redis_db.c holds the keys and runs the commands. */
#include "kit_redis.h"

#include "ws/buf.h"

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- strings and keys ---- */

static void c_ping(struct kit_rcmd *c)
{
    if (c->argc == 2)
        kit_rdb_reply(c->out, WS_REDIS_STRING, c->argv[1].p, c->argv[1].n);
    else
        kit_rdb_reply(c->out, WS_REDIS_STATUS, "PONG", 4);
}

static void c_echo(struct kit_rcmd *c)
{
    kit_rdb_reply(c->out, WS_REDIS_STRING, c->argv[1].p, c->argv[1].n);
}

static void c_get(struct kit_rcmd *c)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_STRING, &bad);
    if (k)
        kit_rdb_reply(c->out, WS_REDIS_STRING, k->items[0].p, k->items[0].n);
    else if (!bad)
        c->out->kind = WS_REDIS_NIL;
}

/* SET key value [NX|XX] [GET] [EX s|PX ms|KEEPTTL] */
static void c_set(struct kit_rcmd *c)
{
    bool nx = false, xx = false, get = false, keepttl = false;
    long long expire = 0; /* milliseconds from now */
    for (size_t i = 3; i < c->argc; i++) {
        const struct kit_rstr *a = &c->argv[i];
        bool has_ttl = expire || keepttl;
        if (kit_rdb_is(a, "NX") && !xx) {
            nx = true;
        } else if (kit_rdb_is(a, "XX") && !nx) {
            xx = true;
        } else if (kit_rdb_is(a, "GET")) {
            get = true;
        } else if (kit_rdb_is(a, "KEEPTTL") && !has_ttl) {
            keepttl = true;
        } else if ((kit_rdb_is(a, "EX") || kit_rdb_is(a, "PX")) && !has_ttl && i + 1 < c->argc) {
            long long v;
            if (!kit_rdb_arg_ll(c, ++i, &v))
                return;
            long long scale = kit_rdb_is(a, "EX") ? 1000 : 1;
            if (v <= 0 || v > LLONG_MAX / scale - c->now) {
                kit_rdb_error(c->out, "ERR invalid expire time in 'set' command");
                return;
            }
            expire = v * scale;
        } else {
            kit_rdb_error(c->out, "ERR syntax error");
            return;
        }
    }
    struct kit_rkey *k =
        kit_rdb_find(c, &c->argv[1]); /* SET overwrites a key of any type, but GET reads */
    if (get && k && k->type != KIT_R_STRING) {
        kit_rdb_error(c->out, KIT_RDB_WRONGTYPE);
        return;
    }
    if (get) {
        if (k)
            kit_rdb_reply(c->out, WS_REDIS_STRING, k->items[0].p, k->items[0].n);
        else
            c->out->kind = WS_REDIS_NIL;
    }
    if ((nx && k) || (xx && !k)) {
        if (!get)
            c->out->kind = WS_REDIS_NIL;
        return;
    }
    long long keep = k && keepttl ? k->expire_ms : 0;
    if (k)
        kit_rdb_delete(c, k);
    k = kit_rdb_create(c, 1, KIT_R_STRING);
    kit_rdb_insert(k, 0, c->argv[2].p, c->argv[2].n);
    k->expire_ms = expire ? c->now + expire : keep;
    if (!get)
        kit_rdb_ok(c->out);
}

static void c_del(struct kit_rcmd *c)
{
    long long n = 0;
    for (size_t i = 1; i < c->argc; i++) {
        struct kit_rkey *k = kit_rdb_find(c, &c->argv[i]);
        if (k) {
            kit_rdb_delete(c, k);
            n++;
        }
    }
    kit_rdb_int(c->out, n);
}

static void c_exists(struct kit_rcmd *c)
{
    long long n = 0;
    for (size_t i = 1; i < c->argc; i++)
        n += kit_rdb_find(c, &c->argv[i]) != NULL;
    kit_rdb_int(c->out, n);
}

static void incr_by(struct kit_rcmd *c, long long by)
{
    bool bad;
    struct kit_rkey *k = kit_rdb_find_typed(c, 1, KIT_R_STRING, &bad);
    if (bad)
        return;
    struct kit_rstr none = {NULL, 0};
    long long sum;
    if (!kit_rdb_add_ll(c, k ? &k->items[0] : &none, by, KIT_RDB_NOT_INT, &sum))
        return;
    if (!k) {
        k = kit_rdb_create(c, 1, KIT_R_STRING);
        k->items = ws_xcalloc(1, sizeof(*k->items));
        k->items[0] = none;
        k->n = k->cap = 1;
    }
    kit_rdb_int(c->out, sum);
}

static void c_incr(struct kit_rcmd *c)
{
    incr_by(c, 1);
}

static void c_decr(struct kit_rcmd *c)
{
    incr_by(c, -1);
}

static void c_incrby(struct kit_rcmd *c)
{
    long long by;
    if (kit_rdb_arg_ll(c, 2, &by))
        incr_by(c, by);
}

static void c_decrby(struct kit_rcmd *c)
{
    long long by;
    if (!kit_rdb_arg_ll(c, 2, &by))
        return;
    if (by == LLONG_MIN)
        kit_rdb_error(c->out, "ERR decrement would overflow");
    else
        incr_by(c, -by);
}

/* EXPIRE/PEXPIRE key time [NX|XX|GT|LT ...] as Redis 7 (expire.c expireGenericCommand): the
 * options first, then the time; no expiry counts as infinite for GT and LT. */
static void expire_in(struct kit_rcmd *c, long long scale)
{
    bool nx = false, xx = false, gt = false, lt = false;
    for (size_t i = 3; i < c->argc; i++) {
        const struct kit_rstr *a = &c->argv[i];
        if (kit_rdb_is(a, "NX")) {
            nx = true;
        } else if (kit_rdb_is(a, "XX")) {
            xx = true;
        } else if (kit_rdb_is(a, "GT")) {
            gt = true;
        } else if (kit_rdb_is(a, "LT")) {
            lt = true;
        } else {
            kit_rdb_error(c->out, "ERR Unsupported option %.*s", (int)a->n, a->p);
            return;
        }
    }
    if (nx && (xx || gt || lt)) {
        kit_rdb_error(c->out,
                      "ERR NX and XX, GT or LT options at the same time are not compatible");
        return;
    }
    if (gt && lt) {
        kit_rdb_error(c->out, "ERR GT and LT options at the same time are not compatible");
        return;
    }
    long long v;
    if (!kit_rdb_arg_ll(c, 2, &v))
        return;
    if (v > LLONG_MAX / scale - c->now || v < (LLONG_MIN + c->now) / scale) {
        kit_rdb_error(c->out, "ERR invalid expire time in '%s' command",
                      scale == 1000 ? "expire" : "pexpire");
        return;
    }
    long long when = c->now + v * scale;
    struct kit_rkey *k = kit_rdb_find(c, &c->argv[1]);
    long long cur = k ? k->expire_ms : 0;
    if (!k || (nx && cur) || (xx && !cur) || (gt && (!cur || when <= cur)) ||
        (lt && cur && when >= cur)) {
        kit_rdb_int(c->out, 0);
        return;
    }
    if (when <= c->now)
        kit_rdb_delete(c, k); /* a time already past deletes the key */
    else
        k->expire_ms = when;
    kit_rdb_int(c->out, 1);
}

static void c_expire(struct kit_rcmd *c)
{
    expire_in(c, 1000);
}

static void c_pexpire(struct kit_rcmd *c)
{
    expire_in(c, 1);
}

static void ttl_in(struct kit_rcmd *c, long long scale)
{
    struct kit_rkey *k = kit_rdb_find(c, &c->argv[1]);
    if (!k || !k->expire_ms) {
        kit_rdb_int(c->out, k ? -1 : -2);
        return;
    }
    long long left = k->expire_ms - c->now;
    if (left < 0)
        left = 0;
    kit_rdb_int(c->out,
                (left + scale / 2) / scale); /* as Redis rounds (expire.c ttlGenericCommand) */
}

static void c_ttl(struct kit_rcmd *c)
{
    ttl_in(c, 1000);
}

static void c_pttl(struct kit_rcmd *c)
{
    ttl_in(c, 1);
}

static void c_persist(struct kit_rcmd *c)
{
    struct kit_rkey *k = kit_rdb_find(c, &c->argv[1]);
    kit_rdb_int(c->out, k && k->expire_ms);
    if (k)
        k->expire_ms = 0;
}

static void c_type(struct kit_rcmd *c)
{
    static const char *const names[] = {"string", "hash", "list", "set"};
    struct kit_rkey *k = kit_rdb_find(c, &c->argv[1]);
    const char *t = k ? names[k->type] : "none";
    kit_rdb_reply(c->out, WS_REDIS_STATUS, t, strlen(t));
}

static void c_mget(struct kit_rcmd *c)
{
    struct ws_redis_value *el = kit_rdb_array(c->out, c->argc - 1);
    for (size_t i = 1; i < c->argc; i++) {
        struct kit_rkey *k = kit_rdb_find(c, &c->argv[i]);
        if (k && k->type == KIT_R_STRING)
            kit_rdb_reply(&el[i - 1], WS_REDIS_STRING, k->items[0].p, k->items[0].n);
        else
            el[i - 1].kind = WS_REDIS_NIL;
    }
}

static void c_mset(struct kit_rcmd *c)
{
    if (c->argc % 2 == 0) {
        kit_rdb_error(c->out, "ERR wrong number of arguments for 'mset' command");
        return;
    }
    for (size_t i = 1; i < c->argc; i += 2) {
        struct kit_rkey *k = kit_rdb_find(c, &c->argv[i]);
        if (k)
            kit_rdb_delete(c, k);
        kit_rdb_insert(kit_rdb_create(c, i, KIT_R_STRING), 0, c->argv[i + 1].p, c->argv[i + 1].n);
    }
    kit_rdb_ok(c->out);
}

const struct kit_rdb_command kit_rdb_strings[] = {
    {"PING", -1, 2, c_ping},       {"ECHO", 2, 0, c_echo},     {"GET", 2, 0, c_get},
    {"SET", -3, 0, c_set},         {"DEL", -2, 0, c_del},      {"UNLINK", -2, 0, c_del},
    {"EXISTS", -2, 0, c_exists},   {"INCR", 2, 0, c_incr},     {"INCRBY", 3, 0, c_incrby},
    {"DECR", 2, 0, c_decr},        {"DECRBY", 3, 0, c_decrby}, {"EXPIRE", -3, 0, c_expire},
    {"PEXPIRE", -3, 0, c_pexpire}, {"TTL", 2, 0, c_ttl},       {"PTTL", 2, 0, c_pttl},
    {"PERSIST", 2, 0, c_persist},  {"TYPE", 2, 0, c_type},     {"MGET", -2, 0, c_mget},
    {"MSET", -3, 0, c_mset},       {NULL, 0, 0, NULL},
};
