/* The in-memory Redis of the testing kit: strings, hashes, lists and sets with expiries, and the
 * commands specs need, each answering with Redis's own reply shape and error text. Sized for
 * specs (keys and members are searched in turn), not for load; no persistence, no RESP. */
#include "kit_redis.h"

#include "ws/buf.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum rtype { R_STRING, R_HASH, R_LIST, R_SET };

struct rstr {
    char *p;
    size_t n;
};

struct rkey {
    struct rstr name;
    enum rtype type;
    long long expire_ms; /* 0: none */
    struct rstr *items;  /* a string: 1; a list in order; a set's members; a hash's field, value */
    size_t n, cap;
};

struct kit_rdb {
    struct rkey **keys;
    size_t nkeys, cap;
    kit_rdb_publish_fn publish;
    void *ud;
};

/* One command being run. */
struct cmd {
    struct kit_rdb *db;
    long long now;
    size_t argc;
    const struct rstr *argv;
    struct ws_redis_value *out;
};

#define WRONGTYPE "WRONGTYPE Operation against a key holding the wrong kind of value"
#define NOT_INT "ERR value is not an integer or out of range"

/* ---- replies ---- */

static void reply_str(struct ws_redis_value *v, enum ws_redis_kind kind, const char *p, size_t n)
{
    v->kind = kind;
    v->str = ws_xmalloc(n + 1);
    memcpy(v->str, p, n);
    v->str[n] = '\0';
    v->len = n;
}

static void reply_error(struct ws_redis_value *v, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    reply_str(v, WS_REDIS_ERROR, text,
              n < 0                      ? 0
              : (size_t)n < sizeof(text) ? (size_t)n
                                         : sizeof(text) - 1);
}

static void reply_int(struct ws_redis_value *v, long long i)
{
    v->kind = WS_REDIS_INTEGER;
    v->integer = i;
}

static void reply_ok(struct ws_redis_value *v)
{
    reply_str(v, WS_REDIS_STATUS, "OK", 2);
}

static struct ws_redis_value *reply_array(struct ws_redis_value *v, size_t n)
{
    v->kind = WS_REDIS_ARRAY;
    v->len = n;
    v->elements = ws_xcalloc(n ? n : 1, sizeof(*v->elements));
    return v->elements;
}

/* ---- values ---- */

static struct rstr dup_str(const char *p, size_t n)
{
    struct rstr s = {ws_xmalloc(n + 1), n};
    memcpy(s.p, p, n);
    s.p[n] = '\0';
    return s;
}

static bool same(const struct rstr *a, const struct rstr *b)
{
    return a->n == b->n && memcmp(a->p, b->p, a->n) == 0;
}

static void free_key(struct rkey *k)
{
    for (size_t i = 0; i < k->n; i++)
        free(k->items[i].p);
    free(k->items);
    free(k->name.p);
    free(k);
}

static void del_at(struct kit_rdb *db, size_t i)
{
    free_key(db->keys[i]);
    db->keys[i] = db->keys[--db->nkeys];
}

/* Redis deletes a key once its time is past (db.c keyIsExpired: now > when). */
static bool expired(const struct rkey *k, long long now)
{
    return k->expire_ms && now > k->expire_ms;
}

static size_t find_index(struct kit_rdb *db, long long now, const struct rstr *name)
{
    for (size_t i = 0; i < db->nkeys; i++) {
        if (!same(&db->keys[i]->name, name))
            continue;
        if (!expired(db->keys[i], now))
            return i;
        del_at(db, i);
        break;
    }
    return SIZE_MAX;
}

static struct rkey *find(struct cmd *c, const struct rstr *name)
{
    size_t i = find_index(c->db, c->now, name);
    return i == SIZE_MAX ? NULL : c->db->keys[i];
}

/* The key at argv[i] when it holds type or is absent (NULL); a WRONGTYPE reply and *bad else. */
static struct rkey *find_typed(struct cmd *c, size_t i, enum rtype type, bool *bad)
{
    struct rkey *k = find(c, &c->argv[i]);
    *bad = k && k->type != type;
    if (*bad)
        reply_error(c->out, WRONGTYPE);
    return *bad ? NULL : k;
}

static struct rkey *create(struct cmd *c, size_t i, enum rtype type)
{
    struct kit_rdb *db = c->db;
    struct rkey *k = ws_xcalloc(1, sizeof(*k));
    k->name = dup_str(c->argv[i].p, c->argv[i].n);
    k->type = type;
    if (db->nkeys == db->cap) {
        db->cap = db->cap ? 2 * db->cap : 16;
        db->keys = ws_xrealloc(db->keys, db->cap * sizeof(*db->keys));
    }
    db->keys[db->nkeys++] = k;
    return k;
}

static void delete_key(struct cmd *c, const struct rkey *k)
{
    for (size_t i = 0; i < c->db->nkeys; i++)
        if (c->db->keys[i] == k) {
            del_at(c->db, i);
            return;
        }
}

static void insert_item(struct rkey *k, size_t at, const char *p, size_t n)
{
    if (k->n == k->cap) {
        k->cap = k->cap ? 2 * k->cap : 4;
        k->items = ws_xrealloc(k->items, k->cap * sizeof(*k->items));
    }
    memmove(&k->items[at + 1], &k->items[at], (k->n - at) * sizeof(*k->items));
    k->items[at] = dup_str(p, n);
    k->n++;
}

static void remove_items(struct rkey *k, size_t at, size_t count)
{
    for (size_t i = at; i < at + count; i++)
        free(k->items[i].p);
    memmove(&k->items[at], &k->items[at + count], (k->n - at - count) * sizeof(*k->items));
    k->n -= count;
}

/* Index of member s in a set, or of field s in a hash (step 2), or SIZE_MAX. */
static size_t find_item(const struct rkey *k, const struct rstr *s, size_t step)
{
    for (size_t i = 0; i < k->n; i += step)
        if (same(&k->items[i], s))
            return i;
    return SIZE_MAX;
}

/* An empty aggregate is no key (Redis removes it). */
static void drop_if_empty(struct cmd *c, struct rkey *k)
{
    if (k && k->n == 0)
        delete_key(c, k);
}

/* Redis's string2ll: an optional '-', digits without a leading zero, within long long. */
static bool to_ll(const struct rstr *s, long long *out)
{
    const char *p = s->p;
    size_t n = s->n;
    bool neg = n > 0 && p[0] == '-';
    if (neg) {
        p++;
        n--;
    }
    if (n == 0 || n > 19 || (p[0] == '0' && (n > 1 || neg)))
        return false;
    unsigned long long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        v = v * 10 + (unsigned long long)(p[i] - '0');
    }
    if (v > (neg ? (unsigned long long)LLONG_MAX + 1 : (unsigned long long)LLONG_MAX))
        return false;
    *out = neg ? (long long)(0 - v) : (long long)v;
    return true;
}

static bool arg_ll(struct cmd *c, size_t i, long long *out)
{
    if (to_ll(&c->argv[i], out))
        return true;
    reply_error(c->out, NOT_INT);
    return false;
}

static bool is(const struct rstr *s, const char *word)
{
    return s->n == strlen(word) && strncasecmp(s->p, word, s->n) == 0;
}

/* Adds by to the decimal integer at *s (absent: 0). False with the reply made when it is not an
 * integer (msg) or the sum overflows. */
static bool add_ll(struct cmd *c, struct rstr *s, long long by, const char *msg, long long *sum)
{
    long long v = 0;
    if (s->p && !to_ll(s, &v)) {
        reply_error(c->out, "%s", msg);
        return false;
    }
    if ((by > 0 && v > LLONG_MAX - by) || (by < 0 && v < LLONG_MIN - by)) {
        reply_error(c->out, "ERR increment or decrement would overflow");
        return false;
    }
    *sum = v + by;
    char text[24];
    int n = snprintf(text, sizeof(text), "%lld", *sum);
    free(s->p);
    *s = dup_str(text, (size_t)n);
    return true;
}

/* ---- strings and keys ---- */

static void c_ping(struct cmd *c)
{
    if (c->argc == 2)
        reply_str(c->out, WS_REDIS_STRING, c->argv[1].p, c->argv[1].n);
    else
        reply_str(c->out, WS_REDIS_STATUS, "PONG", 4);
}

static void c_echo(struct cmd *c)
{
    reply_str(c->out, WS_REDIS_STRING, c->argv[1].p, c->argv[1].n);
}

static void c_get(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_STRING, &bad);
    if (k)
        reply_str(c->out, WS_REDIS_STRING, k->items[0].p, k->items[0].n);
    else if (!bad)
        c->out->kind = WS_REDIS_NIL;
}

/* SET key value [NX|XX] [GET] [EX s|PX ms|KEEPTTL] */
static void c_set(struct cmd *c)
{
    bool nx = false, xx = false, get = false, keepttl = false;
    long long expire = 0; /* milliseconds from now */
    for (size_t i = 3; i < c->argc; i++) {
        const struct rstr *a = &c->argv[i];
        bool has_ttl = expire || keepttl;
        if (is(a, "NX") && !xx) {
            nx = true;
        } else if (is(a, "XX") && !nx) {
            xx = true;
        } else if (is(a, "GET")) {
            get = true;
        } else if (is(a, "KEEPTTL") && !has_ttl) {
            keepttl = true;
        } else if ((is(a, "EX") || is(a, "PX")) && !has_ttl && i + 1 < c->argc) {
            long long v;
            if (!arg_ll(c, ++i, &v))
                return;
            long long scale = is(a, "EX") ? 1000 : 1;
            if (v <= 0 || v > LLONG_MAX / scale - c->now) {
                reply_error(c->out, "ERR invalid expire time in 'set' command");
                return;
            }
            expire = v * scale;
        } else {
            reply_error(c->out, "ERR syntax error");
            return;
        }
    }
    struct rkey *k = find(c, &c->argv[1]); /* SET overwrites a key of any type, but GET reads */
    if (get && k && k->type != R_STRING) {
        reply_error(c->out, WRONGTYPE);
        return;
    }
    if (get) {
        if (k)
            reply_str(c->out, WS_REDIS_STRING, k->items[0].p, k->items[0].n);
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
        delete_key(c, k);
    k = create(c, 1, R_STRING);
    insert_item(k, 0, c->argv[2].p, c->argv[2].n);
    k->expire_ms = expire ? c->now + expire : keep;
    if (!get)
        reply_ok(c->out);
}

static void c_del(struct cmd *c)
{
    long long n = 0;
    for (size_t i = 1; i < c->argc; i++) {
        struct rkey *k = find(c, &c->argv[i]);
        if (k) {
            delete_key(c, k);
            n++;
        }
    }
    reply_int(c->out, n);
}

static void c_exists(struct cmd *c)
{
    long long n = 0;
    for (size_t i = 1; i < c->argc; i++)
        n += find(c, &c->argv[i]) != NULL;
    reply_int(c->out, n);
}

static void incr_by(struct cmd *c, long long by)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_STRING, &bad);
    if (bad)
        return;
    struct rstr none = {NULL, 0};
    long long sum;
    if (!add_ll(c, k ? &k->items[0] : &none, by, NOT_INT, &sum))
        return;
    if (!k) {
        k = create(c, 1, R_STRING);
        k->items = ws_xcalloc(1, sizeof(*k->items));
        k->items[0] = none;
        k->n = k->cap = 1;
    }
    reply_int(c->out, sum);
}

static void c_incr(struct cmd *c)
{
    incr_by(c, 1);
}

static void c_decr(struct cmd *c)
{
    incr_by(c, -1);
}

static void c_incrby(struct cmd *c)
{
    long long by;
    if (arg_ll(c, 2, &by))
        incr_by(c, by);
}

static void c_decrby(struct cmd *c)
{
    long long by;
    if (!arg_ll(c, 2, &by))
        return;
    if (by == LLONG_MIN)
        reply_error(c->out, "ERR decrement would overflow");
    else
        incr_by(c, -by);
}

static void expire_in(struct cmd *c, long long scale)
{
    long long v;
    if (!arg_ll(c, 2, &v))
        return;
    if (c->argc > 3) {
        reply_error(c->out, "ERR Unsupported option %.*s", (int)c->argv[3].n, c->argv[3].p);
        return;
    }
    if (v > LLONG_MAX / scale - c->now || v < (LLONG_MIN + c->now) / scale) {
        reply_error(c->out, "ERR invalid expire time in '%s' command",
                    scale == 1000 ? "expire" : "pexpire");
        return;
    }
    struct rkey *k = find(c, &c->argv[1]);
    if (k && v <= 0)
        delete_key(c, k); /* a time in the past deletes the key */
    else if (k)
        k->expire_ms = c->now + v * scale;
    reply_int(c->out, k != NULL);
}

static void c_expire(struct cmd *c)
{
    expire_in(c, 1000);
}

static void c_pexpire(struct cmd *c)
{
    expire_in(c, 1);
}

static void ttl_in(struct cmd *c, long long scale)
{
    struct rkey *k = find(c, &c->argv[1]);
    if (!k || !k->expire_ms) {
        reply_int(c->out, k ? -1 : -2);
        return;
    }
    long long left = k->expire_ms - c->now;
    if (left < 0)
        left = 0;
    reply_int(c->out,
              (left + scale / 2) / scale); /* as Redis rounds (expire.c ttlGenericCommand) */
}

static void c_ttl(struct cmd *c)
{
    ttl_in(c, 1000);
}

static void c_pttl(struct cmd *c)
{
    ttl_in(c, 1);
}

static void c_persist(struct cmd *c)
{
    struct rkey *k = find(c, &c->argv[1]);
    reply_int(c->out, k && k->expire_ms);
    if (k)
        k->expire_ms = 0;
}

static void c_type(struct cmd *c)
{
    static const char *const names[] = {"string", "hash", "list", "set"};
    struct rkey *k = find(c, &c->argv[1]);
    const char *t = k ? names[k->type] : "none";
    reply_str(c->out, WS_REDIS_STATUS, t, strlen(t));
}

static void c_mget(struct cmd *c)
{
    struct ws_redis_value *el = reply_array(c->out, c->argc - 1);
    for (size_t i = 1; i < c->argc; i++) {
        struct rkey *k = find(c, &c->argv[i]);
        if (k && k->type == R_STRING)
            reply_str(&el[i - 1], WS_REDIS_STRING, k->items[0].p, k->items[0].n);
        else
            el[i - 1].kind = WS_REDIS_NIL;
    }
}

static void c_mset(struct cmd *c)
{
    if (c->argc % 2 == 0) {
        reply_error(c->out, "ERR wrong number of arguments for 'mset' command");
        return;
    }
    for (size_t i = 1; i < c->argc; i += 2) {
        struct rkey *k = find(c, &c->argv[i]);
        if (k)
            delete_key(c, k);
        insert_item(create(c, i, R_STRING), 0, c->argv[i + 1].p, c->argv[i + 1].n);
    }
    reply_ok(c->out);
}

/* Redis's stringmatchlen: * ? [abc] [^a-z] and \x. */
static bool glob(const char *p, size_t pn, const char *s, size_t sn)
{
    while (pn) {
        switch (*p) {
        case '*':
            while (pn > 1 && p[1] == '*')
                p++, pn--;
            if (pn == 1)
                return true;
            for (size_t i = 0; i <= sn; i++)
                if (glob(p + 1, pn - 1, s + i, sn - i))
                    return true;
            return false;
        case '?':
            if (!sn)
                return false;
            break;
        case '[': {
            if (!sn)
                return false;
            p++, pn--;
            bool not = pn && *p == '^', match = false;
            if (not )
                p++, pn--;
            while (pn && *p != ']') {
                if (*p == '\\' && pn >= 2) {
                    p++, pn--;
                    match |= *p == *s;
                } else if (pn >= 3 && p[1] == '-') {
                    char lo = p[0] < p[2] ? p[0] : p[2], hi = p[0] < p[2] ? p[2] : p[0];
                    match |= *s >= lo && *s <= hi;
                    p += 2, pn -= 2;
                } else {
                    match |= *p == *s;
                }
                p++, pn--;
            }
            if (!pn)
                return false; /* no closing ']' */
            if (match == not )
                return false;
            break;
        }
        case '\\':
            if (pn >= 2)
                p++, pn--;
            /* fall through */
        default:
            if (!sn || *p != *s)
                return false;
            break;
        }
        p++, pn--;
        s++, sn--;
    }
    return sn == 0;
}

static int by_name(const void *a, const void *b)
{
    const struct rstr *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int d = memcmp(x->p, y->p, n);
    return d ? d : (x->n > y->n) - (x->n < y->n);
}

/* Replies with the n strings sorted (Redis leaves the order open; specs want one). */
static void reply_sorted(struct ws_redis_value *v, struct rstr *list, size_t n)
{
    qsort(list, n, sizeof(*list), by_name);
    struct ws_redis_value *el = reply_array(v, n);
    for (size_t i = 0; i < n; i++)
        reply_str(&el[i], WS_REDIS_STRING, list[i].p, list[i].n);
}

static void c_keys(struct cmd *c)
{
    struct kit_rdb *db = c->db;
    struct rstr *names = ws_xcalloc(db->nkeys + 1, sizeof(*names));
    size_t n = 0;
    for (size_t i = 0; i < db->nkeys;) {
        struct rkey *k = db->keys[i];
        if (expired(k, c->now)) {
            del_at(db, i);
            continue;
        }
        if (glob(c->argv[1].p, c->argv[1].n, k->name.p, k->name.n))
            names[n++] = k->name;
        i++;
    }
    reply_sorted(c->out, names, n);
    free(names);
}

static void c_dbsize(struct cmd *c)
{
    long long n = 0;
    for (size_t i = 0; i < c->db->nkeys; i++)
        n += !expired(c->db->keys[i], c->now);
    reply_int(c->out, n);
}

static void c_flushall(struct cmd *c)
{
    if (c->argc > 2 || (c->argc == 2 && !is(&c->argv[1], "SYNC") && !is(&c->argv[1], "ASYNC"))) {
        reply_error(c->out, "ERR syntax error");
        return;
    }
    while (c->db->nkeys)
        del_at(c->db, 0);
    reply_ok(c->out);
}

/* ---- hashes ---- */

static void c_hset(struct cmd *c)
{
    if (c->argc % 2 != 0) {
        reply_error(c->out, "ERR wrong number of arguments for '%s' command",
                    is(&c->argv[0], "HMSET") ? "hmset" : "hset");
        return;
    }
    bool bad;
    struct rkey *k = find_typed(c, 1, R_HASH, &bad);
    if (bad)
        return;
    if (!k)
        k = create(c, 1, R_HASH);
    long long added = 0;
    for (size_t i = 2; i < c->argc; i += 2) {
        size_t at = find_item(k, &c->argv[i], 2);
        if (at != SIZE_MAX) {
            free(k->items[at + 1].p);
            k->items[at + 1] = dup_str(c->argv[i + 1].p, c->argv[i + 1].n);
            continue;
        }
        insert_item(k, k->n, c->argv[i].p, c->argv[i].n);
        insert_item(k, k->n, c->argv[i + 1].p, c->argv[i + 1].n);
        added++;
    }
    if (is(&c->argv[0], "HMSET"))
        reply_ok(c->out);
    else
        reply_int(c->out, added);
}

static void c_hget(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_HASH, &bad);
    size_t at = k ? find_item(k, &c->argv[2], 2) : SIZE_MAX;
    if (at != SIZE_MAX)
        reply_str(c->out, WS_REDIS_STRING, k->items[at + 1].p, k->items[at + 1].n);
    else if (!bad)
        c->out->kind = WS_REDIS_NIL;
}

static void c_hdel(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_HASH, &bad);
    if (bad)
        return;
    long long n = 0;
    for (size_t i = 2; k && i < c->argc; i++) {
        size_t at = find_item(k, &c->argv[i], 2);
        if (at != SIZE_MAX) {
            remove_items(k, at, 2);
            n++;
        }
    }
    drop_if_empty(c, k);
    reply_int(c->out, n);
}

static void c_hgetall(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_HASH, &bad);
    if (bad)
        return;
    size_t n = k ? k->n : 0;
    struct ws_redis_value *el = reply_array(c->out, n);
    for (size_t i = 0; i < n; i++)
        reply_str(&el[i], WS_REDIS_STRING, k->items[i].p, k->items[i].n);
}

static void c_hlen(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_HASH, &bad);
    if (!bad)
        reply_int(c->out, k ? (long long)k->n / 2 : 0);
}

static void c_hincrby(struct cmd *c)
{
    long long by, sum;
    if (!arg_ll(c, 3, &by))
        return;
    bool bad;
    struct rkey *k = find_typed(c, 1, R_HASH, &bad);
    if (bad)
        return;
    bool made = !k;
    if (made)
        k = create(c, 1, R_HASH);
    size_t at = find_item(k, &c->argv[2], 2);
    struct rstr none = {NULL, 0};
    if (!add_ll(c, at != SIZE_MAX ? &k->items[at + 1] : &none, by,
                "ERR hash value is not an integer", &sum)) {
        if (made)
            delete_key(c, k);
        return;
    }
    if (at == SIZE_MAX) {
        insert_item(k, k->n, c->argv[2].p, c->argv[2].n);
        insert_item(k, k->n, none.p, none.n);
        free(none.p);
    }
    reply_int(c->out, sum);
}

/* ---- lists ---- */

static void push(struct cmd *c, bool left)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_LIST, &bad);
    if (bad)
        return;
    if (!k)
        k = create(c, 1, R_LIST);
    for (size_t i = 2; i < c->argc; i++)
        insert_item(k, left ? 0 : k->n, c->argv[i].p, c->argv[i].n);
    reply_int(c->out, (long long)k->n);
}

static void c_lpush(struct cmd *c)
{
    push(c, true);
}

static void c_rpush(struct cmd *c)
{
    push(c, false);
}

/* LPOP/RPOP key [count]: one element (or nil), or with a count an array (or a nil array). */
static void pop(struct cmd *c, bool left)
{
    long long count = 1;
    if (c->argc == 3 && (!to_ll(&c->argv[2], &count) || count < 0)) {
        reply_error(c->out, "ERR value is out of range, must be positive");
        return;
    }
    bool bad;
    struct rkey *k = find_typed(c, 1, R_LIST, &bad);
    if (bad)
        return;
    if (!k) {
        c->out->kind = WS_REDIS_NIL;
        return;
    }
    size_t n = (size_t)count < k->n ? (size_t)count : k->n;
    struct ws_redis_value *el = c->argc == 3 ? reply_array(c->out, n) : c->out;
    for (size_t i = 0; i < n; i++) {
        const struct rstr *s = &k->items[left ? i : k->n - 1 - i];
        reply_str(&el[i], WS_REDIS_STRING, s->p, s->n);
    }
    remove_items(k, left ? 0 : k->n - n, n);
    drop_if_empty(c, k);
}

static void c_lpop(struct cmd *c)
{
    pop(c, true);
}

static void c_rpop(struct cmd *c)
{
    pop(c, false);
}

/* start..stop of a list of n as Redis reads them (negative from the end, clamped); false when
 * the range is empty. */
static bool range(long long start, long long stop, size_t n, size_t *from, size_t *to)
{
    long long len = (long long)n;
    if (start < 0)
        start = len + start < 0 ? 0 : len + start;
    if (stop < 0)
        stop = len + stop;
    if (stop >= len)
        stop = len - 1;
    if (start > stop || start >= len)
        return false;
    *from = (size_t)start;
    *to = (size_t)stop;
    return true;
}

static void c_lrange(struct cmd *c)
{
    long long start, stop;
    if (!arg_ll(c, 2, &start) || !arg_ll(c, 3, &stop))
        return;
    bool bad;
    struct rkey *k = find_typed(c, 1, R_LIST, &bad);
    if (bad)
        return;
    size_t from, to;
    if (!k || !range(start, stop, k->n, &from, &to)) {
        reply_array(c->out, 0);
        return;
    }
    struct ws_redis_value *el = reply_array(c->out, to - from + 1);
    for (size_t i = from; i <= to; i++)
        reply_str(&el[i - from], WS_REDIS_STRING, k->items[i].p, k->items[i].n);
}

static void c_ltrim(struct cmd *c)
{
    long long start, stop;
    if (!arg_ll(c, 2, &start) || !arg_ll(c, 3, &stop))
        return;
    bool bad;
    struct rkey *k = find_typed(c, 1, R_LIST, &bad);
    if (bad)
        return;
    size_t from, to;
    if (k && range(start, stop, k->n, &from, &to)) {
        remove_items(k, to + 1, k->n - to - 1);
        remove_items(k, 0, from);
    } else if (k) {
        remove_items(k, 0, k->n);
    }
    drop_if_empty(c, k);
    reply_ok(c->out);
}

static void c_llen(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_LIST, &bad);
    if (!bad)
        reply_int(c->out, k ? (long long)k->n : 0);
}

/* ---- sets ---- */

static void c_sadd(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_SET, &bad);
    if (bad)
        return;
    if (!k)
        k = create(c, 1, R_SET);
    long long n = 0;
    for (size_t i = 2; i < c->argc; i++)
        if (find_item(k, &c->argv[i], 1) == SIZE_MAX) {
            insert_item(k, k->n, c->argv[i].p, c->argv[i].n);
            n++;
        }
    reply_int(c->out, n);
}

static void c_srem(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_SET, &bad);
    if (bad)
        return;
    long long n = 0;
    for (size_t i = 2; k && i < c->argc; i++) {
        size_t at = find_item(k, &c->argv[i], 1);
        if (at != SIZE_MAX) {
            remove_items(k, at, 1);
            n++;
        }
    }
    drop_if_empty(c, k);
    reply_int(c->out, n);
}

static void c_smembers(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_SET, &bad);
    if (bad)
        return;
    size_t n = k ? k->n : 0;
    struct rstr *list = ws_xcalloc(n + 1, sizeof(*list));
    if (n)
        memcpy(list, k->items, n * sizeof(*list));
    reply_sorted(c->out, list, n);
    free(list);
}

static void c_sismember(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_SET, &bad);
    if (!bad)
        reply_int(c->out, k && find_item(k, &c->argv[2], 1) != SIZE_MAX);
}

static void c_scard(struct cmd *c)
{
    bool bad;
    struct rkey *k = find_typed(c, 1, R_SET, &bad);
    if (!bad)
        reply_int(c->out, k ? (long long)k->n : 0);
}

/* ---- pub/sub ---- */

static void c_publish(struct cmd *c)
{
    size_t n = c->db->publish ? c->db->publish(c->db->ud, c->argv[1].p, c->argv[1].n, c->argv[2].p,
                                               c->argv[2].n)
                              : 0;
    reply_int(c->out, (long long)n);
}

/* ---- the table ---- */

/* arity as in Redis's command table: n exactly, -n at least n (the name counts). */
static const struct command {
    const char *name;
    int arity;
    void (*run)(struct cmd *c);
} commands[] = {
    {"PING", -1, c_ping},
    {"ECHO", 2, c_echo},
    {"GET", 2, c_get},
    {"SET", -3, c_set},
    {"DEL", -2, c_del},
    {"UNLINK", -2, c_del},
    {"EXISTS", -2, c_exists},
    {"INCR", 2, c_incr},
    {"INCRBY", 3, c_incrby},
    {"DECR", 2, c_decr},
    {"DECRBY", 3, c_decrby},
    {"EXPIRE", -3, c_expire},
    {"PEXPIRE", -3, c_pexpire},
    {"TTL", 2, c_ttl},
    {"PTTL", 2, c_pttl},
    {"PERSIST", 2, c_persist},
    {"TYPE", 2, c_type},
    {"MGET", -2, c_mget},
    {"MSET", -3, c_mset},
    {"KEYS", 2, c_keys},
    {"DBSIZE", 1, c_dbsize},
    {"FLUSHALL", -1, c_flushall},
    {"FLUSHDB", -1, c_flushall},
    {"HSET", -4, c_hset},
    {"HMSET", -4, c_hset},
    {"HGET", 3, c_hget},
    {"HDEL", -3, c_hdel},
    {"HGETALL", 2, c_hgetall},
    {"HLEN", 2, c_hlen},
    {"HINCRBY", 4, c_hincrby},
    {"LPUSH", -3, c_lpush},
    {"RPUSH", -3, c_rpush},
    {"LPOP", -2, c_lpop},
    {"RPOP", -2, c_rpop},
    {"LRANGE", 4, c_lrange},
    {"LTRIM", 4, c_ltrim},
    {"LLEN", 2, c_llen},
    {"SADD", -3, c_sadd},
    {"SREM", -3, c_srem},
    {"SMEMBERS", 2, c_smembers},
    {"SISMEMBER", 3, c_sismember},
    {"SCARD", 2, c_scard},
    {"PUBLISH", 3, c_publish},
};

/* The command named argv[0], or NULL with the reply Redis gives made in out. */
static const struct command *lookup(size_t argc, const struct rstr *argv,
                                    struct ws_redis_value *out)
{
    for (size_t i = 0; i < sizeof(commands) / sizeof(*commands); i++) {
        const struct command *cmd = &commands[i];
        if (!is(&argv[0], cmd->name))
            continue;
        size_t need = (size_t)(cmd->arity < 0 ? -cmd->arity : cmd->arity);
        if ((cmd->arity > 0 && argc != need) || argc < need ||
            (cmd->arity == -1 && argc > 2 && is(&argv[0], "PING")) ||
            (argc > 3 && (is(&argv[0], "LPOP") || is(&argv[0], "RPOP")))) {
            char lower[16];
            size_t n = strlen(cmd->name);
            for (size_t k = 0; k <= n; k++)
                lower[k] = (char)(cmd->name[k] >= 'A' && cmd->name[k] <= 'Z' ? cmd->name[k] + 32
                                                                             : cmd->name[k]);
            reply_error(out, "ERR wrong number of arguments for '%s' command", lower);
            return NULL;
        }
        return cmd;
    }
    /* server.c processCommand: the name as given and the first arguments, quoted */
    char text[400];
    int n = snprintf(text, sizeof(text), "ERR unknown command '%.*s', with args beginning with: ",
                     (int)(argv[0].n > 128 ? 128 : argv[0].n), argv[0].p);
    for (size_t i = 1; i < argc && n > 0 && (size_t)n < sizeof(text) - 1; i++)
        n += snprintf(text + n, sizeof(text) - (size_t)n, "'%.*s' ",
                      (int)(argv[i].n > 64 ? 64 : argv[i].n), argv[i].p);
    reply_error(out, "%s", text);
    return NULL;
}

/* ---- the database ---- */

struct kit_rdb *kit_rdb_new(kit_rdb_publish_fn publish, void *ud)
{
    struct kit_rdb *db = ws_xcalloc(1, sizeof(*db));
    db->publish = publish;
    db->ud = ud;
    return db;
}

void kit_rdb_free(struct kit_rdb *db)
{
    if (!db)
        return;
    while (db->nkeys)
        del_at(db, 0);
    free(db->keys);
    free(db);
}

static void run_one(struct kit_rdb *db, long long now, size_t argc, const struct rstr *argv,
                    struct ws_redis_value *out)
{
    const struct command *cmd = lookup(argc, argv, out);
    if (!cmd)
        return;
    struct cmd c = {db, now, argc, argv, out};
    cmd->run(&c);
}

void kit_rdb_run(struct kit_rdb *db, long long now_ms, size_t ncmds, const int *argc,
                 const char *const *argv, const size_t *argvlen, struct ws_redis_value *out)
{
    size_t total = 0;
    for (size_t i = 0; i < ncmds; i++)
        total += (size_t)argc[i];
    struct rstr *args = ws_xcalloc(total + 1, sizeof(*args));
    for (size_t i = 0; i < total; i++)
        args[i] = (struct rstr){(char *)argv[i], argvlen[i]};
    size_t multi = SIZE_MAX; /* the command after MULTI while a transaction is open */
    bool aborted = false;
    size_t *first = ws_xcalloc(ncmds + 1, sizeof(*first));
    for (size_t i = 0, at = 0; i < ncmds; at += (size_t)argc[i], i++) {
        first[i] = at;
        const struct rstr *a = &args[at];
        size_t n = (size_t)argc[i];
        memset(&out[i], 0, sizeof(out[i]));
        if (is(a, "MULTI") && n == 1) {
            if (multi != SIZE_MAX) {
                reply_error(&out[i], "ERR MULTI calls can not be nested");
                continue;
            }
            multi = i + 1;
            aborted = false;
            reply_ok(&out[i]);
        } else if ((is(a, "EXEC") || is(a, "DISCARD")) && n == 1) {
            if (multi == SIZE_MAX) {
                reply_error(&out[i], "ERR %s without MULTI", is(a, "EXEC") ? "EXEC" : "DISCARD");
            } else if (is(a, "DISCARD")) {
                reply_ok(&out[i]);
            } else if (aborted) {
                reply_error(&out[i], "EXECABORT Transaction discarded because of previous errors.");
            } else {
                struct ws_redis_value *el = reply_array(&out[i], i - multi);
                for (size_t q = multi; q < i; q++)
                    run_one(db, now_ms, (size_t)argc[q], &args[first[q]], &el[q - multi]);
            }
            multi = SIZE_MAX;
        } else if (multi != SIZE_MAX) {
            struct ws_redis_value probe = {0};
            if (lookup(n, a, &probe)) {
                reply_str(&out[i], WS_REDIS_STATUS, "QUEUED", 6);
            } else {
                out[i] = probe; /* an unknown command or a wrong arity: EXEC will refuse */
                aborted = true;
            }
        } else {
            run_one(db, now_ms, n, a, &out[i]);
        }
    }
    free(first);
    free(args);
}
