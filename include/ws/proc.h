/* The process's own set-up around serving: the open-file limit, the pidfile, and dropping root
 * after the listeners are open (src/core/proc.c). */
#ifndef WS_PROC_H
#define WS_PROC_H

#include <stddef.h>

/* Raises the open-file limit to the hard limit: every connection is a descriptor. */
void ws_proc_raise_nofile(void);

/* Becomes user (its uid and gid, no supplementary groups) and checks that root cannot be
 * regained. Returns 0, or -1 with the reason in err. */
int ws_proc_drop_privileges(const char *user, char *err, size_t errlen);

/* Writes this process's pid to path; a failure is logged (warn), not fatal. */
void ws_proc_write_pidfile(const char *path);

/* Removes the pidfile (NULL: none); logs when it cannot (after --user, its folder may not be
 * writable). */
void ws_proc_remove_pidfile(const char *path);

#endif
