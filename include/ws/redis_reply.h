/* Redis replies as values of our own, copied out of hiredis's redisReply so that they outlive its
 * callbacks; what a pool hands to a request's callback. No I/O. */
#ifndef WS_REDIS_REPLY_H
#define WS_REDIS_REPLY_H

#include <stdbool.h>
#include <stddef.h>

struct redisReply;

enum ws_redis_kind {
    WS_REDIS_STRING,  /* bulk string */
    WS_REDIS_STATUS,  /* +OK */
    WS_REDIS_INTEGER, /* :1 */
    WS_REDIS_NIL,     /* $-1 or *-1 */
    WS_REDIS_ARRAY,   /* len elements */
    WS_REDIS_ERROR,   /* -ERR ...: str holds the text */
};

/* One reply, copied out of hiredis: owned by the request's result. */
struct ws_redis_value {
    enum ws_redis_kind kind;
    long long integer;
    size_t len;                      /* bytes of str, or elements */
    char *str;                       /* STRING, STATUS, ERROR: len bytes and a NUL */
    struct ws_redis_value *elements; /* ARRAY */
};

/* What came back: ok and n replies in the order of the commands, or not ok and err (the
 * connection failed or closed: the message names the server). Owned by the callback, which
 * frees it with ws_redis_result_free. */
struct ws_redis_result {
    bool ok;
    size_t n;
    struct ws_redis_value *values;
    char err[256];
};

/* Frees what res holds (not res itself). */
void ws_redis_result_free(struct ws_redis_result *res);

/* Copies r (and its elements) into v; v owns the copies (free them with the result that holds v,
 * ws_redis_result_free). */
void ws_redis_value_copy(struct ws_redis_value *v, const struct redisReply *r);

#endif
