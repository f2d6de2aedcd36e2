/* sd_notify(3) without libsystemd: a datagram to $NOTIFY_SOCKET per state change. Sends are
 * best effort and never block the loop (MSG_DONTWAIT); it keeps no socket open between calls and
 * never unsets the variable, so workers forked later can notify too (NotifyAccess=all). */
#include "ws/notify.h"

#include "ws/err.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

bool ws_notify_enabled(void)
{
    const char *path = getenv("NOTIFY_SOCKET");
    return path && *path;
}

int ws_notify_send(const char *state)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    size_t n = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || n >= sizeof(sa.sun_path))
        return WS_E_INVAL; /* sd_notify(3): an absolute path, or '@' for the abstract namespace */
    memcpy(sa.sun_path, path, n);
    if (path[0] == '@')
        sa.sun_path[0] = 0;
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + (path[0] == '/'));
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return WS_E_IO;
    size_t size = strlen(state);
    ssize_t sent =
        sendto(fd, state, size, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&sa, len);
    close(fd);
    return sent == (ssize_t)size ? 0 : WS_E_IO;
}

int ws_notify_ready(void)
{
    return ws_notify_send("READY=1\nSTATUS=serving");
}

int ws_notify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char state[96];
    snprintf(state, sizeof(state), "RELOADING=1\nSTATUS=reloading\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    return ws_notify_send(state);
}

int ws_notify_stopping(void)
{
    return ws_notify_send("STOPPING=1\nSTATUS=stopping");
}
