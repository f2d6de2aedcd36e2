/* The in-memory Redis behind ws.redis's stand-in (kit_redis.c): the keys and a small command
 * subset with Redis's own reply shapes and error texts (kit_redis_db.c and the command files
 * kit_redis_strings.c, kit_redis_types.c). It knows nothing of the
 * loop, the pools or Lua: the caller gives the time and delivers what PUBLISH sends. */
#ifndef WS_KIT_REDIS_H
#define WS_KIT_REDIS_H

#include "ws/redis_client.h"

#include <stdbool.h>
#include <stddef.h>

struct kit_rdb;

/* PUBLISH's delivery: hands msg to channel's subscribers and returns how many there are. */
typedef size_t (*kit_rdb_publish_fn)(void *ud, const char *channel, size_t channel_len,
                                     const char *msg, size_t msg_len);

/* An empty database whose PUBLISH calls publish with ud. */
struct kit_rdb *kit_rdb_new(kit_rdb_publish_fn publish, void *ud);

/* Frees db and its keys. NULL is a no-op. */
void kit_rdb_free(struct kit_rdb *db);

/* Runs ncmds commands in a row at now_ms (milliseconds on the caller's clock, for expiries):
 * command i has argc[i] arguments taken in turn from argv/argvlen. Fills out[i] with each reply
 * (owned by the caller: ws_redis_result_free). MULTI opens a transaction that the following
 * commands queue in (+QUEUED) until EXEC runs them (an array of their replies) or DISCARD drops
 * them; a transaction still open at the end is dropped, as when a connection closes. */
void kit_rdb_run(struct kit_rdb *db, long long now_ms, size_t ncmds, const int *argc,
                 const char *const *argv, const size_t *argvlen, struct ws_redis_value *out);

struct kit_rstr;

/* Asked for each command run before the data (argv[0] the name): true when it made the reply in
 * out, false to let the data answer. */
typedef bool (*kit_rdb_answer_fn)(void *ud, size_t argc, const struct kit_rstr *argv,
                                  struct ws_redis_value *out);

/* From now on answer (NULL: none) is asked first, with ud. Inside MULTI the commands are still
 * checked against the ones the data knows. */
void kit_rdb_answer_with(struct kit_rdb *db, kit_rdb_answer_fn answer, void *ud);

/* ---- for the command files (kit_redis_db.c, kit_redis_types.c) ---- */

enum kit_rtype { KIT_R_STRING, KIT_R_HASH, KIT_R_LIST, KIT_R_SET };

/* Bytes, with a NUL after them. */
struct kit_rstr {
    char *p;
    size_t n;
};

struct kit_rkey {
    struct kit_rstr name;
    enum kit_rtype type;
    long long expire_ms; /* 0: none */
    struct kit_rstr
        *items; /* a string: 1; a list in order; a set's members; a hash's field, value */
    size_t n, cap;
};

/* One command being run: its arguments (argv[0] the name) and where its reply goes. */
struct kit_rcmd {
    struct kit_rdb *db;
    long long now;
    size_t argc;
    const struct kit_rstr *argv;
    struct ws_redis_value *out;
};

/* A command: arity as in Redis's command table (n exactly, -n at least n, the name counting),
 * max arguments or 0. Tables end with a NULL name. */
struct kit_rdb_command {
    const char *name;
    int arity;
    size_t max;
    void (*run)(struct kit_rcmd *c);
};

/* The string and key commands (kit_redis_strings.c), the hash, list and set ones
 * (kit_redis_types.c). */
extern const struct kit_rdb_command kit_rdb_strings[];
extern const struct kit_rdb_command kit_rdb_aggregates[];

#define KIT_RDB_WRONGTYPE "WRONGTYPE Operation against a key holding the wrong kind of value"
#define KIT_RDB_NOT_INT "ERR value is not an integer or out of range"

/* Replies, made in v: bytes of a kind (STRING, STATUS, ERROR), an error from a format, an
 * integer, +OK, an array of n elements to fill (returned), the strings of list sorted (list is
 * sorted in place; the reply copies them). */
void kit_rdb_reply(struct ws_redis_value *v, enum ws_redis_kind kind, const char *p, size_t n);
void kit_rdb_error(struct ws_redis_value *v, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void kit_rdb_int(struct ws_redis_value *v, long long i);
void kit_rdb_ok(struct ws_redis_value *v);
struct ws_redis_value *kit_rdb_array(struct ws_redis_value *v, size_t n);
void kit_rdb_sorted(struct ws_redis_value *v, struct kit_rstr *list, size_t n);

/* A copy of n bytes at p (owned by the caller). */
struct kit_rstr kit_rdb_dup(const char *p, size_t n);

/* Whether s is word, ignoring case. */
bool kit_rdb_is(const struct kit_rstr *s, const char *word);

/* The key named argv[i] when it holds type, or NULL when it is absent (or expired: then deleted);
 * when it holds another type, NULL, *bad and the WRONGTYPE reply made. */
struct kit_rkey *kit_rdb_find_typed(struct kit_rcmd *c, size_t i, enum kit_rtype type, bool *bad);

/* The key named name, or NULL when it is absent (or expired: then deleted). */
struct kit_rkey *kit_rdb_find(struct kit_rcmd *c, const struct kit_rstr *name);

/* A new empty key named argv[i] (owned by the database), and deleting one. */
struct kit_rkey *kit_rdb_create(struct kit_rcmd *c, size_t i, enum kit_rtype type);
void kit_rdb_delete(struct kit_rcmd *c, const struct kit_rkey *k);

/* Deletes k when it holds no item (Redis keeps no empty aggregate). k may be NULL. */
void kit_rdb_drop_if_empty(struct kit_rcmd *c, struct kit_rkey *k);

/* Items: a copy of n bytes at p inserted at index at; count items from at removed; the index of
 * s among every step-th item (a hash's fields: 2), or SIZE_MAX. */
void kit_rdb_insert(struct kit_rkey *k, size_t at, const char *p, size_t n);
void kit_rdb_remove(struct kit_rkey *k, size_t at, size_t count);
size_t kit_rdb_find_item(const struct kit_rkey *k, const struct kit_rstr *s, size_t step);

/* Integers as Redis reads them (string2ll: an optional '-', digits, no leading zero). arg_ll reads
 * argv[i] and makes the "not an integer" reply when it is not one. add_ll adds by to the decimal
 * integer at *s (s->p NULL: 0) and stores the sum there as text; false with the reply made (msg
 * when *s is not an integer) when it cannot. */
bool kit_rdb_to_ll(const struct kit_rstr *s, long long *out);
bool kit_rdb_arg_ll(struct kit_rcmd *c, size_t i, long long *out);
bool kit_rdb_add_ll(struct kit_rcmd *c, struct kit_rstr *s, long long by, const char *msg,
                    long long *sum);

#endif
