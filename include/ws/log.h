/* Structured logging to stderr or a log file: one line per event, as key=value text or as JSON,
 * with stable keys (event, conn, peer, code, reason, ms). Peer-provided strings are escaped;
 * message payloads are never logged. The file is reopened on request (SIGUSR1, for logrotate);
 * catching the signal is the caller's job. Not thread-safe (one loop per process). */
#ifndef WS_LOG_H
#define WS_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum ws_log_level { WS_LOG_DEBUG, WS_LOG_INFO, WS_LOG_WARN, WS_LOG_ERROR };
enum ws_log_format { WS_LOG_TEXT, WS_LOG_JSON };

#define WS_LOG_LINE_MAX 2048

/* A line being built: ws_log_begin, fields, ws_log_end. A line is cut between fields, so it
 * stays well-formed; a string too long for the line ends in "...". */
struct ws_log_line {
    char buf[WS_LOG_LINE_MAX];
    size_t len;
    bool active; /* false when the level is filtered out: the field calls do nothing */
    bool full;   /* a field did not fit: it and the fields after it are left out */
};

/* Sets the minimum level written and the format. */
void ws_log_setup(enum ws_log_level level, enum ws_log_format format);

/* Appends the lines to the file at path (created with mode 0640) instead of stderr; NULL goes
 * back to stderr. Returns 0, or WS_E_IO with the reason in err, the destination unchanged. */
int ws_log_open(const char *path, char *err, size_t errlen);

/* Opens the log file again by its name, so lines go to a fresh file once logrotate has moved the
 * old one away, and logs event=log_reopened there. Nothing to do on stderr. Returns 0, or WS_E_IO
 * (logged as log_reopen_failed) when it cannot be opened: the lines keep going to the old one. */
int ws_log_reopen(void);

/* Turns flood control (at most 100 lines of one event per second) off or back on: a test that
 * reads the log needs every line. On by default. */
void ws_log_set_flood_control(bool on);

/* Adds worker=<index> to every line from now on (0: none). */
void ws_log_set_worker(int index);

/* True when a line at level would be written. */
bool ws_log_enabled(enum ws_log_level level);

/* Parses "debug|info|warn|error" / "text|json"; -1 when unknown. */
int ws_log_level_parse(const char *s);
int ws_log_format_parse(const char *s);

/* Starts a line with a timestamp, the level and event=<event> (a string literal: flood control
 * counts lines per event, at most 100 a second, and reports the suppressed ones). */
void ws_log_begin(struct ws_log_line *l, enum ws_log_level level, const char *event);

/* Adds key=value; strings are escaped (control bytes, quotes, non-UTF-8 as \xNN). */
void ws_log_str(struct ws_log_line *l, const char *key, const char *s, size_t n);
void ws_log_cstr(struct ws_log_line *l, const char *key, const char *s);
/* Adds a multi-line value (an error with its traceback) as one field: like ws_log_str, but
 * newlines and tabs are written \n and \t in both formats (JSON decodes them to real newlines;
 * in text, a backslash is always doubled, so tools can split the value on \n). */
void ws_log_text(struct ws_log_line *l, const char *key, const char *s, size_t n);
void ws_log_u64(struct ws_log_line *l, const char *key, uint64_t v);
void ws_log_i64(struct ws_log_line *l, const char *key, int64_t v);
void ws_log_ms(struct ws_log_line *l, const char *key, double seconds);

/* Writes the line (one write(2) call) and resets it. */
void ws_log_end(struct ws_log_line *l);

/* Writes the counts of lines flood control suppressed and has not reported yet (at exit). */
void ws_log_flush(void);

/* One-call form for messages without fields: event plus msg=<text>. */
void ws_log_msg(enum ws_log_level level, const char *event, const char *msg);

#endif
