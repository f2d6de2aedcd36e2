/* Redis replies copied out of hiredis's redisReply into values of our own, which outlive hiredis's
 * callbacks, and freed. It reads no connection and knows nothing of who asked. */
#include "ws/redis_reply.h"

#include "redis_hiredis.h"

#include "ws/buf.h"

#include <stdlib.h>
#include <string.h>

void ws_redis_value_copy(struct ws_redis_value *v, const redisReply *r)
{
    memset(v, 0, sizeof(*v));
    switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
    case REDIS_REPLY_ERROR:
        v->kind = r->type == REDIS_REPLY_STRING   ? WS_REDIS_STRING
                  : r->type == REDIS_REPLY_STATUS ? WS_REDIS_STATUS
                                                  : WS_REDIS_ERROR;
        v->len = (size_t)r->len;
        v->str = ws_xstrndup(r->str ? r->str : "", v->len);
        break;
    case REDIS_REPLY_INTEGER:
        v->kind = WS_REDIS_INTEGER;
        v->integer = r->integer;
        break;
    case REDIS_REPLY_ARRAY:
        v->kind = WS_REDIS_ARRAY;
        v->len = r->elements;
        v->elements = v->len ? ws_xcalloc(v->len, sizeof(*v->elements)) : NULL;
        for (size_t i = 0; i < v->len; i++)
            ws_redis_value_copy(&v->elements[i], r->element[i]);
        break;
    default:
        v->kind = WS_REDIS_NIL;
        break;
    }
}

static void free_value(struct ws_redis_value *v)
{
    for (size_t i = 0; i < v->len && v->elements; i++)
        free_value(&v->elements[i]);
    free(v->elements);
    free(v->str);
}

void ws_redis_result_free(struct ws_redis_result *res)
{
    for (size_t i = 0; i < res->n && res->values; i++)
        free_value(&res->values[i]);
    free(res->values);
    res->values = NULL;
    res->n = 0;
}
