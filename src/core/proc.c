/* The process's own set-up around serving: the open-file limit, the pidfile, and dropping root
 * after the listeners are open. Nothing of connections, the app or the loop. */
#include "ws/proc.h"

#include "ws/log.h"

#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

/* Raises the open-file limit to the hard limit: every connection is a descriptor. */
void ws_proc_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* Drops root after the listeners are open (ports below 1024, a TLS key only root may read). */
int ws_proc_drop_privileges(const char *user, char *err, size_t errlen)
{
    struct passwd *pw = getpwnam(user);
    if (!pw) {
        snprintf(err, errlen, "--user %s: no such user", user);
        return -1;
    }
    if (setgroups(0, NULL) < 0 && errno != EPERM) {
        snprintf(err, errlen, "--user %s: setgroups: %s", user, strerror(errno));
        return -1;
    }
    if (setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
        snprintf(err, errlen, "--user %s: %s", user, strerror(errno));
        return -1;
    }
    if (pw->pw_uid != 0 && setuid(0) == 0) {
        snprintf(err, errlen, "--user %s: could regain root", user);
        return -1;
    }
    return 0;
}

/* Removes the pidfile; says so when it cannot (after --user, its folder may not be writable). */
void ws_proc_remove_pidfile(const char *path)
{
    if (path && unlink(path) < 0 && errno != ENOENT) {
        struct ws_log_line l;
        ws_log_begin(&l, WS_LOG_WARN, "pidfile_left");
        ws_log_cstr(&l, "file", path);
        ws_log_cstr(&l, "error", strerror(errno));
        ws_log_end(&l);
    }
}

void ws_proc_write_pidfile(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        ws_log_msg(WS_LOG_WARN, "pidfile", strerror(errno));
        return;
    }
    fprintf(f, "%ld\n", (long)getpid());
    fclose(f);
}
