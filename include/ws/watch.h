/* Watches a folder tree (inotify) for changed .lua files and calls back once per burst of
 * changes, after a quiet period: editors that write a temp file and rename it, or delete and
 * recreate the file, cause one call, not several. Knows nothing of Lua. */
#ifndef WS_WATCH_H
#define WS_WATCH_H

#include <ev.h>

struct ws_watch;

typedef void (*ws_watch_fn)(void *ctx);

/* Watches dir and its subfolders (a few levels) for .lua files written, moved in, created or
 * deleted; fn(ctx) runs debounce_s seconds after the last such change. Returns NULL with a
 * message in err when inotify is unavailable. */
struct ws_watch *ws_watch_new(struct ev_loop *loop, const char *dir, double debounce_s,
                              ws_watch_fn fn, void *ctx, char *err, size_t errlen);

/* Stops watching and frees; NULL is a no-op. */
void ws_watch_free(struct ws_watch *w);

#endif
