/* Log lines in text (key=value) or JSON, written whole with one write(2) so lines from a handler
 * and from the core never interleave. Escaping is the same for both formats' strings. The
 * destination is stderr or one file opened with O_APPEND (reopened by name on request); no
 * rotation of its own: logrotate moves the file, SIGUSR1 makes us reopen it. */
#include "ws/log.h"

#include "ws/err.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = STDERR_FILENO;
static char log_path[PATH_MAX]; /* "" while logging to stderr */
static enum ws_log_level min_level = WS_LOG_INFO;
static enum ws_log_format format = WS_LOG_TEXT;
static int worker; /* added to every line when > 0 */

/* Flood control: at most FLOOD_MAX lines of one event per second; the rest are counted and
 * reported in one "suppressed" line when the second is over. */
#define FLOOD_MAX 100
#define FLOOD_SLOTS 64

struct flood_slot {
    const char *event; /* events are static strings: compared by address */
    time_t second;
    unsigned lines, suppressed;
};

static struct flood_slot flood[FLOOD_SLOTS];
static time_t flood_second; /* the second of the latest line */
static bool flood_control = true;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ws_log_set_flood_control(bool on)
{
    flood_control = on;
}

void ws_log_set_worker(int index)
{
    worker = index;
}

void ws_log_setup(enum ws_log_level level, enum ws_log_format fmt)
{
    min_level = level;
    format = fmt;
}

static int open_file(const char *path, char *err, size_t errlen)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open log file %s: %s", path, strerror(errno));
        return WS_E_IO;
    }
    return fd;
}

static void use_fd(int fd)
{
    if (log_fd != STDERR_FILENO)
        close(log_fd);
    log_fd = fd;
}

int ws_log_open(const char *path, char *err, size_t errlen)
{
    if (!path) {
        use_fd(STDERR_FILENO);
        log_path[0] = 0;
        return 0;
    }
    if (strlen(path) >= sizeof(log_path)) {
        snprintf(err, errlen, "cannot open log file %s: %s", path, strerror(ENAMETOOLONG));
        return WS_E_IO;
    }
    int fd = open_file(path, err, errlen);
    if (fd < 0)
        return fd;
    use_fd(fd);
    snprintf(log_path, sizeof(log_path), "%s", path);
    return 0;
}

int ws_log_reopen(void)
{
    if (!log_path[0])
        return 0;
    char err[PATH_MAX + 64];
    int fd = open_file(log_path, err, sizeof(err));
    if (fd < 0) {
        ws_log_msg(WS_LOG_ERROR, "log_reopen_failed", err);
        return fd;
    }
    use_fd(fd);
    struct ws_log_line l;
    ws_log_begin(&l, WS_LOG_INFO, "log_reopened");
    ws_log_cstr(&l, "file", log_path);
    ws_log_end(&l);
    return 0;
}

bool ws_log_enabled(enum ws_log_level level)
{
    return level >= min_level;
}

int ws_log_level_parse(const char *s)
{
    for (int i = 0; i < 4; i++)
        if (strcmp(s, level_names[i]) == 0)
            return i;
    return -1;
}

int ws_log_format_parse(const char *s)
{
    if (strcmp(s, "text") == 0)
        return WS_LOG_TEXT;
    if (strcmp(s, "json") == 0)
        return WS_LOG_JSON;
    return -1;
}

static void put(struct ws_log_line *l, const char *s, size_t n)
{
    size_t room = sizeof(l->buf) - 2 - l->len; /* keep room for "}\n" */
    if (n > room)
        n = room;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(struct ws_log_line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Bytes left for fields (after "}\n"). */
static size_t room(const struct ws_log_line *l)
{
    return sizeof(l->buf) - 2 - l->len;
}

/* A line is cut between fields, never inside one, so it stays well-formed (valid JSON, a closed
 * quote): a field that does not fit is dropped with every field after it. */
static bool fits(struct ws_log_line *l, const char *k, size_t value_bytes)
{
    if (!l->active || l->full)
        return false;
    if (strlen(k) * 6 + 4 + value_bytes > room(l)) { /* a key byte escapes to 6 at most */
        l->full = true;
        return false;
    }
    return true;
}

/* Escapes for both formats: printable ASCII stays, '"' and '\\' are backslashed, everything else
 * is \xNN (text) or \u00NN (JSON), so a peer cannot forge a line or a field. Newlines and tabs
 * are \n and \t in JSON, and in text too when multiline (a traceback): a backslash is always
 * doubled, so "\n" in a field can only mean a newline and tools can split on it. */
static void put_escaped(struct ws_log_line *l, const char *s, size_t n, bool multiline)
{
    char tmp[8];
    bool short_escapes = multiline || format == WS_LOG_JSON;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (room(l) < 12) { /* the longest escape, "...", the closing quote */
            put(l, "...", 3);
            l->full = true;
            return;
        }
        if (ch == '"' || ch == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)ch;
            put(l, tmp, 2);
        } else if (short_escapes && (ch == '\n' || ch == '\t')) {
            tmp[0] = '\\';
            tmp[1] = ch == '\n' ? 'n' : 't';
            put(l, tmp, 2);
        } else if (ch >= 0x20 && ch < 0x7f) {
            put(l, (const char *)&ch, 1);
        } else {
            int k = snprintf(tmp, sizeof(tmp), format == WS_LOG_JSON ? "\\u%04x" : "\\x%02x", ch);
            put(l, tmp, (size_t)k);
        }
    }
}

/* Keys come from the app too (ws.log's field table): escaped like values. */
static void key(struct ws_log_line *l, const char *k)
{
    puts_(l, format == WS_LOG_JSON ? ",\"" : " ");
    put_escaped(l, k, strlen(k), false);
    puts_(l, format == WS_LOG_JSON ? "\":" : "=");
}

static void begin_line(struct ws_log_line *l, enum ws_log_level level, const char *event,
                       const struct timespec *ts);

/* Writes how many lines of slot's event were suppressed, if any, and resets the count. */
static void report_suppressed(struct flood_slot *slot, const struct timespec *ts)
{
    if (!slot->event || !slot->suppressed)
        return;
    struct ws_log_line l;
    begin_line(&l, WS_LOG_WARN, "suppressed", ts);
    ws_log_cstr(&l, "of", slot->event);
    ws_log_u64(&l, "lines", slot->suppressed);
    ws_log_end(&l);
    slot->suppressed = 0;
}

void ws_log_flush(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    for (int i = 0; i < FLOOD_SLOTS; i++)
        report_suppressed(&flood[i], &ts);
}

/* Counts a line of event; false when it is over the per-second budget. A budget period that
 * ended with suppressed lines first writes their count. */
static bool flood_allow(const char *event, const struct timespec *ts)
{
    if (ts->tv_sec != flood_second) {
        /* a new second: what earlier seconds suppressed is told now, whatever the event */
        flood_second = ts->tv_sec;
        for (int i = 0; i < FLOOD_SLOTS; i++)
            if (flood[i].second != ts->tv_sec)
                report_suppressed(&flood[i], ts);
    }
    struct flood_slot *slot = &flood[((uintptr_t)event >> 4) % FLOOD_SLOTS];
    if (slot->event != event || slot->second != ts->tv_sec) {
        report_suppressed(slot, ts);
        slot->event = event;
        slot->second = ts->tv_sec;
        slot->lines = slot->suppressed = 0;
    }
    if (slot->lines < FLOOD_MAX) {
        slot->lines++;
        return true;
    }
    slot->suppressed++;
    return false;
}

void ws_log_begin(struct ws_log_line *l, enum ws_log_level level, const char *event)
{
    l->len = 0;
    l->full = false;
    l->active = ws_log_enabled(level);
    if (!l->active)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    l->active = !flood_control || flood_allow(event, &ts);
    if (l->active)
        begin_line(l, level, event, &ts);
}

static void begin_line(struct ws_log_line *l, enum ws_log_level level, const char *event,
                       const struct timespec *tsp)
{
    struct timespec ts = *tsp;
    l->len = 0;
    l->active = true;
    l->full = false;
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[96];
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ts.tv_nsec / 1000000));
    if (format == WS_LOG_JSON) {
        puts_(l, "{\"ts\":\"");
        puts_(l, when);
        puts_(l, "\",\"level\":\"");
        puts_(l, level_names[level]);
        puts_(l, "\",\"event\":\"");
        put_escaped(l, event, strlen(event), false);
        puts_(l, "\"");
    } else {
        puts_(l, when);
        puts_(l, " level=");
        puts_(l, level_names[level]);
        puts_(l, " event=");
        put_escaped(l, event, strlen(event), false);
    }
    if (worker > 0)
        ws_log_i64(l, "worker", worker);
}

static void put_string(struct ws_log_line *l, const char *k, const char *s, size_t n,
                       bool multiline)
{
    if (!fits(l, k, 16)) /* room for a start of the value at least */
        return;
    key(l, k);
    puts_(l, "\"");
    put_escaped(l, s, n, multiline);
    puts_(l, "\"");
}

void ws_log_str(struct ws_log_line *l, const char *k, const char *s, size_t n)
{
    put_string(l, k, s, n, false);
}

void ws_log_text(struct ws_log_line *l, const char *k, const char *s, size_t n)
{
    put_string(l, k, s, n, true);
}

void ws_log_cstr(struct ws_log_line *l, const char *k, const char *s)
{
    ws_log_str(l, k, s ? s : "", s ? strlen(s) : 0);
}

void ws_log_u64(struct ws_log_line *l, const char *k, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    if (!fits(l, k, (size_t)n))
        return;
    key(l, k);
    put(l, tmp, (size_t)n);
}

void ws_log_i64(struct ws_log_line *l, const char *k, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
    if (!fits(l, k, (size_t)n))
        return;
    key(l, k);
    put(l, tmp, (size_t)n);
}

void ws_log_ms(struct ws_log_line *l, const char *k, double seconds)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%.3f", seconds * 1000.0);
    if (!fits(l, k, (size_t)n))
        return;
    key(l, k);
    put(l, tmp, (size_t)n);
}

void ws_log_end(struct ws_log_line *l)
{
    if (!l->active)
        return;
    if (format == WS_LOG_JSON)
        l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
    ssize_t ignored = write(log_fd, l->buf, l->len);
    (void)ignored;
    l->len = 0;
    l->active = false;
}

void ws_log_msg(enum ws_log_level level, const char *event, const char *msg)
{
    struct ws_log_line l;
    ws_log_begin(&l, level, event);
    ws_log_cstr(&l, "msg", msg);
    ws_log_end(&l);
}
