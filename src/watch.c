/* inotify on the app's folder and its subfolders. Folders, not files, are watched, so a file
 * replaced by rename or deleted and recreated keeps being seen. */
#include "ws/watch.h"

#include "ws/buf.h"
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

struct ws_watch {
    struct ev_loop *loop;
    int fd;
    ev_io io;
    ev_timer debounce;
    ws_watch_fn fn;
    void *ctx;
    int ndirs;
};

static void add_tree(struct ws_watch *w, const char *dir, int depth)
{
    if (w->ndirs >= MAX_DIRS || inotify_add_watch(w->fd, dir, EVENTS | IN_ONLYDIR) < 0)
        return;
    w->ndirs++;
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
            p += sizeof(*ev) + ev->len;
        }
    }
    if (relevant) {
        /* restart the quiet period: one callback per burst of saves */
        ev_timer_again(loop, &w->debounce);
    }
}

static void on_debounce(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct ws_watch *w = t->data;
    ev_timer_stop(loop, t);
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
    w->debounce.repeat = debounce_s;
    w->debounce.data = w;
    return w;
}

void ws_watch_free(struct ws_watch *w)
{
    if (!w)
        return;
    ev_io_stop(w->loop, &w->io);
    ev_timer_stop(w->loop, &w->debounce);
    close(w->fd);
    free(w);
}
