/* The status file of `wsserver --reload`: where the result of the latest reload is written and
 * how (one line, renamed into place). Whether a reload succeeded is decided by lb_load.c. */
#include "ws/lb.h"

#include "ws/err.h"
#include "ws/server.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int lb_status_path(char *out, size_t cap, const char *pidfile, long pid, int which)
{
    const char *dirs[3];
    int lens[3], n = 0;
    const char *slash = pidfile ? strrchr(pidfile, '/') : NULL;
    if (pidfile) {
        dirs[n] = slash ? pidfile : ".";
        lens[n++] = slash ? (int)(slash - pidfile) : 1;
    }
    const char *runtime = getenv("RUNTIME_DIRECTORY"); /* systemd: "a:b" for several folders */
    if (runtime && *runtime) {
        dirs[n] = runtime;
        lens[n++] = (int)strcspn(runtime, ":");
    }
    dirs[n] = "/tmp";
    lens[n++] = 4;
    if (which < 0 || which >= n)
        return WS_E_INVAL;
    int k = snprintf(out, cap, "%.*s/wsserver-%ld.status", lens[which], dirs[which], pid);
    return k < 0 || (size_t)k >= cap ? WS_E_INVAL : 0;
}

/* Writes line to path through a temporary file renamed into place, so a reader never sees half
 * a line and a planted symlink is replaced, not followed. False when the folder refuses. */
static bool put_status(const char *path, const char *line, size_t n)
{
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return false;
    bool written = write(fd, line, n) == (ssize_t)n;
    close(fd);
    if (written && rename(tmp, path) == 0)
        return true;
    unlink(tmp);
    return false;
}

void lb_status_write(struct lb_app *a, bool ok, const char *why)
{
    if (a->status_pid < 0)
        return;
    if (ok && a->srv && a->srv->reload_error[0]) {
        ok = false; /* the app took over, but the TLS files did not: the operator must know */
        why = a->srv->reload_error;
    }
    char line[700];
    int n = snprintf(line, sizeof(line), "attempt=%llu result=%s generation=%llu%s%s\n",
                     (unsigned long long)a->attempts, ok ? "ok" : "failed",
                     (unsigned long long)a->generation, why ? " error=" : "", why ? why : "");
    if (n >= (int)sizeof(line)) {
        n = (int)sizeof(line) - 1; /* a long error is cut; the line still ends the same way */
        line[n - 1] = '\n';
    }
    for (int i = 0; i < n - 1; i++)
        if (line[i] == '\n')
            line[i] = ' ';
    char path[PATH_MAX], next[PATH_MAX];
    long pid = a->status_pid ? a->status_pid : (long)getpid();
    bool done = false;
    for (int i = 0; lb_status_path(path, sizeof(path), a->config.pidfile, pid, i) == 0; i++) {
        bool last = lb_status_path(next, sizeof(next), a->config.pidfile, pid, i + 1) < 0;
        if (!done || last)
            done = put_status(path, line, (size_t)n) || done;
    }
}
