/* The in-memory Redis of the testing kit: the keys (strings, hashes, lists, sets) with their
 * expiries, the helpers the command files share, the keyspace commands (KEYS, FLUSHALL, PUBLISH)
 * and the run of a request, MULTI/EXEC included. Sized for specs (keys and members are searched
 * in turn), not for load; no persistence, no RESP. */
#include "kit_redis.h"

#include "ws/buf.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct kit_rdb {
    struct kit_rkey **keys;
    size_t nkeys, cap;
    kit_rdb_publish_fn publish;
    void *ud;
    kit_rdb_answer_fn answer; /* asked first, when set */
    void *answer_ud;
};

/* ---- replies ---- */

void kit_rdb_reply(struct ws_redis_value *v, enum ws_redis_kind kind, const char *p, size_t n)
{
    v->kind = kind;
    v->str = ws_xmalloc(n + 1);
    memcpy(v->str, p, n);
    v->str[n] = '\0';
    v->len = n;
}

void kit_rdb_error(struct ws_redis_value *v, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    kit_rdb_reply(v, WS_REDIS_ERROR, text,
                  n < 0                      ? 0
                  : (size_t)n < sizeof(text) ? (size_t)n
                                             : sizeof(text) - 1);
}

void kit_rdb_int(struct ws_redis_value *v, long long i)
{
    v->kind = WS_REDIS_INTEGER;
    v->integer = i;
}

void kit_rdb_ok(struct ws_redis_value *v)
{
    kit_rdb_reply(v, WS_REDIS_STATUS, "OK", 2);
}

struct ws_redis_value *kit_rdb_array(struct ws_redis_value *v, size_t n)
{
    v->kind = WS_REDIS_ARRAY;
    v->len = n;
    v->elements = ws_xcalloc(n ? n : 1, sizeof(*v->elements));
    return v->elements;
}

/* ---- values ---- */

struct kit_rstr kit_rdb_dup(const char *p, size_t n)
{
    struct kit_rstr s = {ws_xmalloc(n + 1), n};
    memcpy(s.p, p, n);
    s.p[n] = '\0';
    return s;
}

static bool same(const struct kit_rstr *a, const struct kit_rstr *b)
{
    return a->n == b->n && memcmp(a->p, b->p, a->n) == 0;
}

static void free_key(struct kit_rkey *k)
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
static bool expired(const struct kit_rkey *k, long long now)
{
    return k->expire_ms && now > k->expire_ms;
}

static size_t find_index(struct kit_rdb *db, long long now, const struct kit_rstr *name)
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

struct kit_rkey *kit_rdb_find(struct kit_rcmd *c, const struct kit_rstr *name)
{
    size_t i = find_index(c->db, c->now, name);
    return i == SIZE_MAX ? NULL : c->db->keys[i];
}

/* The key at argv[i] when it holds type or is absent (NULL); a WRONGTYPE reply and *bad else. */
struct kit_rkey *kit_rdb_find_typed(struct kit_rcmd *c, size_t i, enum kit_rtype type, bool *bad)
{
    struct kit_rkey *k = kit_rdb_find(c, &c->argv[i]);
    *bad = k && k->type != type;
    if (*bad)
        kit_rdb_error(c->out, KIT_RDB_WRONGTYPE);
    return *bad ? NULL : k;
}

struct kit_rkey *kit_rdb_create(struct kit_rcmd *c, size_t i, enum kit_rtype type)
{
    struct kit_rdb *db = c->db;
    struct kit_rkey *k = ws_xcalloc(1, sizeof(*k));
    k->name = kit_rdb_dup(c->argv[i].p, c->argv[i].n);
    k->type = type;
    if (db->nkeys == db->cap) {
        db->cap = db->cap ? 2 * db->cap : 16;
        db->keys = ws_xrealloc(db->keys, db->cap * sizeof(*db->keys));
    }
    db->keys[db->nkeys++] = k;
    return k;
}

void kit_rdb_delete(struct kit_rcmd *c, const struct kit_rkey *k)
{
    for (size_t i = 0; i < c->db->nkeys; i++)
        if (c->db->keys[i] == k) {
            del_at(c->db, i);
            return;
        }
}

void kit_rdb_insert(struct kit_rkey *k, size_t at, const char *p, size_t n)
{
    if (k->n == k->cap) {
        k->cap = k->cap ? 2 * k->cap : 4;
        k->items = ws_xrealloc(k->items, k->cap * sizeof(*k->items));
    }
    memmove(&k->items[at + 1], &k->items[at], (k->n - at) * sizeof(*k->items));
    k->items[at] = kit_rdb_dup(p, n);
    k->n++;
}

void kit_rdb_remove(struct kit_rkey *k, size_t at, size_t count)
{
    for (size_t i = at; i < at + count; i++)
        free(k->items[i].p);
    memmove(&k->items[at], &k->items[at + count], (k->n - at - count) * sizeof(*k->items));
    k->n -= count;
}

/* Index of member s in a set, or of field s in a hash (step 2), or SIZE_MAX. */
size_t kit_rdb_find_item(const struct kit_rkey *k, const struct kit_rstr *s, size_t step)
{
    for (size_t i = 0; i < k->n; i += step)
        if (same(&k->items[i], s))
            return i;
    return SIZE_MAX;
}

/* An empty aggregate is no key (Redis removes it). */
void kit_rdb_drop_if_empty(struct kit_rcmd *c, struct kit_rkey *k)
{
    if (k && k->n == 0)
        kit_rdb_delete(c, k);
}

/* Redis's string2ll: an optional '-', digits without a leading zero, within long long. */
bool kit_rdb_to_ll(const struct kit_rstr *s, long long *out)
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

bool kit_rdb_arg_ll(struct kit_rcmd *c, size_t i, long long *out)
{
    if (kit_rdb_to_ll(&c->argv[i], out))
        return true;
    kit_rdb_error(c->out, KIT_RDB_NOT_INT);
    return false;
}

bool kit_rdb_is(const struct kit_rstr *s, const char *word)
{
    return s->n == strlen(word) && strncasecmp(s->p, word, s->n) == 0;
}

/* Adds by to the decimal integer at *s (absent: 0). False with the reply made when it is not an
 * integer (msg) or the sum overflows. */
bool kit_rdb_add_ll(struct kit_rcmd *c, struct kit_rstr *s, long long by, const char *msg,
                    long long *sum)
{
    long long v = 0;
    if (s->p && !kit_rdb_to_ll(s, &v)) {
        kit_rdb_error(c->out, "%s", msg);
        return false;
    }
    if ((by > 0 && v > LLONG_MAX - by) || (by < 0 && v < LLONG_MIN - by)) {
        kit_rdb_error(c->out, "ERR increment or decrement would overflow");
        return false;
    }
    *sum = v + by;
    char text[24];
    int n = snprintf(text, sizeof(text), "%lld", *sum);
    free(s->p);
    *s = kit_rdb_dup(text, (size_t)n);
    return true;
}

/* ---- the keyspace ---- */

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
    const struct kit_rstr *x = a, *y = b;
    size_t n = x->n < y->n ? x->n : y->n;
    int d = memcmp(x->p, y->p, n);
    return d ? d : (x->n > y->n) - (x->n < y->n);
}

/* Replies with the n strings sorted (Redis leaves the order open; specs want one). */
void kit_rdb_sorted(struct ws_redis_value *v, struct kit_rstr *list, size_t n)
{
    qsort(list, n, sizeof(*list), by_name);
    struct ws_redis_value *el = kit_rdb_array(v, n);
    for (size_t i = 0; i < n; i++)
        kit_rdb_reply(&el[i], WS_REDIS_STRING, list[i].p, list[i].n);
}

static void c_keys(struct kit_rcmd *c)
{
    struct kit_rdb *db = c->db;
    struct kit_rstr *names = ws_xcalloc(db->nkeys + 1, sizeof(*names));
    size_t n = 0;
    for (size_t i = 0; i < db->nkeys;) {
        struct kit_rkey *k = db->keys[i];
        if (expired(k, c->now)) {
            del_at(db, i);
            continue;
        }
        if (glob(c->argv[1].p, c->argv[1].n, k->name.p, k->name.n))
            names[n++] = k->name;
        i++;
    }
    kit_rdb_sorted(c->out, names, n);
    free(names);
}

static void c_dbsize(struct kit_rcmd *c)
{
    long long n = 0;
    for (size_t i = 0; i < c->db->nkeys; i++)
        n += !expired(c->db->keys[i], c->now);
    kit_rdb_int(c->out, n);
}

static void c_flushall(struct kit_rcmd *c)
{
    if (c->argc > 2 ||
        (c->argc == 2 && !kit_rdb_is(&c->argv[1], "SYNC") && !kit_rdb_is(&c->argv[1], "ASYNC"))) {
        kit_rdb_error(c->out, "ERR syntax error");
        return;
    }
    while (c->db->nkeys)
        del_at(c->db, 0);
    kit_rdb_ok(c->out);
}

/* ---- pub/sub ---- */

static void c_publish(struct kit_rcmd *c)
{
    size_t n = c->db->publish ? c->db->publish(c->db->ud, c->argv[1].p, c->argv[1].n, c->argv[2].p,
                                               c->argv[2].n)
                              : 0;
    kit_rdb_int(c->out, (long long)n);
}

/* ---- the table ---- */

static const struct kit_rdb_command commands[] = {
    {"KEYS", 2, 0, c_keys},         {"DBSIZE", 1, 0, c_dbsize},   {"FLUSHALL", -1, 0, c_flushall},
    {"FLUSHDB", -1, 0, c_flushall}, {"PUBLISH", 3, 0, c_publish}, {NULL, 0, 0, NULL},
};

/* The command named argv[0], or NULL with the reply Redis gives made in out. */
static const struct kit_rdb_command *lookup(size_t argc, const struct kit_rstr *argv,
                                            struct ws_redis_value *out)
{
    const struct kit_rdb_command *const tables[] = {kit_rdb_strings, commands, kit_rdb_aggregates};
    for (size_t t = 0; t < sizeof(tables) / sizeof(*tables); t++)
        for (const struct kit_rdb_command *cmd = tables[t]; cmd->name; cmd++) {
            if (!kit_rdb_is(&argv[0], cmd->name))
                continue;
            size_t need = (size_t)(cmd->arity < 0 ? -cmd->arity : cmd->arity);
            if ((cmd->arity > 0 && argc != need) || argc < need || (cmd->max && argc > cmd->max)) {
                char lower[16];
                size_t n = strlen(cmd->name);
                for (size_t k = 0; k <= n; k++)
                    lower[k] = (char)(cmd->name[k] >= 'A' && cmd->name[k] <= 'Z' ? cmd->name[k] + 32
                                                                                 : cmd->name[k]);
                kit_rdb_error(out, "ERR wrong number of arguments for '%s' command", lower);
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
    kit_rdb_error(out, "%s", text);
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

void kit_rdb_answer_with(struct kit_rdb *db, kit_rdb_answer_fn answer, void *ud)
{
    db->answer = answer;
    db->answer_ud = ud;
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

static void run_one(struct kit_rdb *db, long long now, size_t argc, const struct kit_rstr *argv,
                    struct ws_redis_value *out)
{
    if (db->answer && db->answer(db->answer_ud, argc, argv, out))
        return;
    const struct kit_rdb_command *cmd = lookup(argc, argv, out);
    if (!cmd)
        return;
    struct kit_rcmd c = {db, now, argc, argv, out};
    cmd->run(&c);
}

void kit_rdb_run(struct kit_rdb *db, long long now_ms, size_t ncmds, const int *argc,
                 const char *const *argv, const size_t *argvlen, struct ws_redis_value *out)
{
    size_t total = 0;
    for (size_t i = 0; i < ncmds; i++)
        total += (size_t)argc[i];
    struct kit_rstr *args = ws_xcalloc(total + 1, sizeof(*args));
    for (size_t i = 0; i < total; i++)
        args[i] = (struct kit_rstr){(char *)argv[i], argvlen[i]};
    size_t multi = SIZE_MAX; /* the command after MULTI while a transaction is open */
    bool aborted = false;
    size_t *first = ws_xcalloc(ncmds + 1, sizeof(*first));
    for (size_t i = 0, at = 0; i < ncmds; at += (size_t)argc[i], i++) {
        first[i] = at;
        const struct kit_rstr *a = &args[at];
        size_t n = (size_t)argc[i];
        memset(&out[i], 0, sizeof(out[i]));
        if (kit_rdb_is(a, "MULTI") && n == 1) {
            if (multi != SIZE_MAX) {
                kit_rdb_error(&out[i], "ERR MULTI calls can not be nested");
                continue;
            }
            multi = i + 1;
            aborted = false;
            kit_rdb_ok(&out[i]);
        } else if ((kit_rdb_is(a, "EXEC") || kit_rdb_is(a, "DISCARD")) && n == 1) {
            if (multi == SIZE_MAX) {
                kit_rdb_error(&out[i], "ERR %s without MULTI",
                              kit_rdb_is(a, "EXEC") ? "EXEC" : "DISCARD");
            } else if (kit_rdb_is(a, "DISCARD")) {
                kit_rdb_ok(&out[i]);
            } else if (aborted) {
                kit_rdb_error(&out[i],
                              "EXECABORT Transaction discarded because of previous errors.");
            } else {
                struct ws_redis_value *el = kit_rdb_array(&out[i], i - multi);
                for (size_t q = multi; q < i; q++)
                    run_one(db, now_ms, (size_t)argc[q], &args[first[q]], &el[q - multi]);
            }
            multi = SIZE_MAX;
        } else if (multi != SIZE_MAX) {
            struct ws_redis_value probe = {0};
            if (lookup(n, a, &probe)) {
                kit_rdb_reply(&out[i], WS_REDIS_STATUS, "QUEUED", 6);
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
