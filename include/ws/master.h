/* --workers N: a master process that forks N workers sharing the listen port (SO_REUSEPORT),
 * supervises them and relays the built-in bus between them. */
#ifndef WS_MASTER_H
#define WS_MASTER_H

/* A worker's main: index is 1..N, hub_fd its end of the hub socketpair. Returns an exit code. */
typedef int (*ws_worker_fn)(void *arg, int index, int hub_fd);

/* Forks workers running fn(arg, index, hub_fd), restarts each one that dies (with back-off while
 * it keeps dying within seconds), forwards SIGHUP to all, reopens its log file and forwards
 * SIGUSR1, and on SIGTERM/SIGINT notifies systemd (STOPPING=1), forwards it and waits up to
 * shutdown_timeout + 5 s before SIGKILL. Returns the master's exit code; workers
 * never return from it. */
int ws_master_run(int workers, double shutdown_timeout, ws_worker_fn fn, void *arg);

#endif
