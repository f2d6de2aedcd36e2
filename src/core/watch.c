/* inotify on the app's folder and its subfolders. Folders, not files, are watched, so a file
 * replaced by rename or deleted and recreated keeps being seen. */
#include "ws/watch.h"

#include "ws/buf.h"
#include "ws/clock.h"
#include "ws/log.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <unistd.h>

#define MAX_DEPTH 4
#define MAX_DIRS 256
#define EVENTS (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE)

struct watched {
    int wd;
    int depth;
    char *path;
};

struct ws_watch {
    struct ev_loop *loop;
    int fd;
    struct watched dirs[MAX_DIRS]; /* to name the folders created later inside them */
    ev_io io;
    ev_timer debounce;
    double debounce_s; /* the quiet period a burst of saves must end with */
    ws_watch_fn fn;
    void *ctx;
    int ndirs;
};

static void add_tree(struct ws_watch *w, const char *dir, int depth)
{
    if (w->ndirs >= MAX_DIRS)
        return;
    int wd = inotify_add_watch(w->fd, dir, EVENTS | IN_ONLYDIR);
    if (wd < 0)
        return;
    for (int i = 0; i < w->ndirs; i++)
        if (w->dirs[i].wd == wd)
            return; /* already watched (a folder moved back in) */
    w->dirs[w->ndirs++] = (struct watched){wd, depth, ws_xstrndup(dir, strlen(dir))};
    if (depth >= MAX_DEPTH)
        return;
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.' || e->d_type != DT_DIR || strcmp(e->d_name, "node_modules") == 0)
            continue;
        char sub[PATH_MAX];
        if (snprintf(sub, sizeof(sub), "%s/%s", dir, e->d_name) < (int)sizeof(sub))
            add_tree(w, sub, depth + 1);
    }
    closedir(d);
}

static bool is_lua(const char *name)
{
    size_t n = strlen(name);
    return n > 4 && strcmp(name + n - 4, ".lua") == 0;
}

/* A folder appeared inside a watched one: modules may be required from it later. */
static void add_created(struct ws_watch *w, int parent_wd, const char *name)
{
    for (int i = 0; i < w->ndirs; i++) {
        if (w->dirs[i].wd != parent_wd || w->dirs[i].depth >= MAX_DEPTH || name[0] == '.')
            continue;
        char sub[PATH_MAX];
        if (snprintf(sub, sizeof(sub), "%s/%s", w->dirs[i].path, name) < (int)sizeof(sub))
            add_tree(w, sub, w->dirs[i].depth + 1);
        return;
    }
}

static void on_inotify(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    struct ws_watch *w = io->data;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    bool relevant = false;
    for (;;) {
        ssize_t n = read(w->fd, buf, sizeof(buf));
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)p;
            if (ev->len && is_lua(ev->name))
                relevant = true;
            if (ev->len && (ev->mask & IN_ISDIR) && (ev->mask & (IN_CREATE | IN_MOVED_TO)))
                add_created(w, ev->wd, ev->name);
            p += sizeof(*ev) + ev->len;
        }
    }
    if (relevant) {
        /* restart the quiet period: one callback per burst of saves */
        ws_timer_start(loop, &w->debounce, w->debounce_s, 0);
    }
}

static void on_debounce(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct ws_watch *w = t->data;
    ws_timer_stop(loop, t);
    w->fn(w->ctx);
}

struct ws_watch *ws_watch_new(struct ev_loop *loop, const char *dir, double debounce_s,
                              ws_watch_fn fn, void *ctx, char *err, size_t errlen)
{
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "--watch: inotify: %s", strerror(errno));
        return NULL;
    }
    struct ws_watch *w = ws_xcalloc(1, sizeof(*w));
    w->loop = loop;
    w->fd = fd;
    w->fn = fn;
    w->ctx = ctx;
    add_tree(w, dir, 0);
    if (w->ndirs == 0) {
        snprintf(err, errlen, "--watch: cannot watch %s: %s", dir, strerror(errno));
        ws_watch_free(w);
        return NULL;
    }
    ev_io_init(&w->io, on_inotify, fd, EV_READ);
    w->io.data = w;
    ev_io_start(loop, &w->io);
    ev_init(&w->debounce, on_debounce);
    w->debounce_s = debounce_s;
    w->debounce.data = w;
    return w;
}

void ws_watch_free(struct ws_watch *w)
{
    if (!w)
        return;
    ev_io_stop(w->loop, &w->io);
    ws_timer_stop(w->loop, &w->debounce);
    close(w->fd);
    for (int i = 0; i < w->ndirs; i++)
        free(w->dirs[i].path);
    free(w);
}
