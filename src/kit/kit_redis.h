/* The in-memory Redis behind ws.redis's stand-in (kit_redis.c): the keys and a small command
 * subset with Redis's own reply shapes and error texts (kit_redis_db.c). It knows nothing of the
 * loop, the pools or Lua: the caller gives the time and delivers what PUBLISH sends. */
#ifndef WS_KIT_REDIS_H
#define WS_KIT_REDIS_H

#include "ws/redis_client.h"

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

#endif
