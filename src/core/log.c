/* Log lines in text (key=value) or JSON, written whole with one write(2) so lines from a handler
 * and from the core never interleave. Escaping is the same for both formats' strings. */
#include "ws/log.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

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

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ws_log_set_worker(int index)
{
    worker = index;
}

void ws_log_setup(enum ws_log_level level, enum ws_log_format fmt)
{
    min_level = level;
    format = fmt;
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

/* Bytes left for fields: 2 stay free for the line's end ("}\n"). */
static size_t room(const struct ws_log_line *l)
{
    return sizeof(l->buf) - 2 - l->len;
}

static void put(struct ws_log_line *l, const char *s, size_t n)
{
    if (n > room(l))
        n = room(l);
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

static void puts_(struct ws_log_line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* Escapes one byte for both formats: printable ASCII stays, '"' and '\\' are backslashed,
 * everything else is \xNN (text) or \u00NN (JSON), so a peer cannot forge a line or a field.
 * Returns the length written to tmp (at most 6). */
static size_t escape(unsigned char ch, char *tmp)
{
    if (ch == '"' || ch == '\\') {
        tmp[0] = '\\';
        tmp[1] = (char)ch;
        return 2;
    }
    if (ch >= 0x20 && ch < 0x7f) {
        tmp[0] = (char)ch;
        return 1;
    }
    return (size_t)snprintf(tmp, 8, format == WS_LOG_JSON ? "\\u%04x" : "\\x%02x", ch);
}

static size_t escaped_len(const char *s, size_t n)
{
    char tmp[8];
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += escape((unsigned char)s[i], tmp);
    return len;
}

/* Appends s escaped, stopping before the first escape that would leave less than keep bytes of
 * room: a cut never splits an escape, so the string can still be closed. */
static void put_escaped(struct ws_log_line *l, const char *s, size_t n, size_t keep)
{
    char tmp[8];
    for (size_t i = 0; i < n; i++) {
        size_t k = escape((unsigned char)s[i], tmp);
        if (k + keep > room(l))
            return;
        put(l, tmp, k);
    }
}

/* Starts field k (escaped: the app names fields too) when it fits with value_min bytes of its
 * value; otherwise writes nothing and returns false, so a full line drops fields whole. */
static bool key(struct ws_log_line *l, const char *k, size_t value_min)
{
    bool json = format == WS_LOG_JSON;
    if ((json ? 4 : 2) + escaped_len(k, strlen(k)) + value_min > room(l))
        return false;
    puts_(l, json ? ",\"" : " ");
    put_escaped(l, k, strlen(k), 0);
    puts_(l, json ? "\":" : "=");
    return true;
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
    l->active = ws_log_enabled(level);
    if (!l->active)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    l->active = flood_allow(event, &ts);
    if (l->active)
        begin_line(l, level, event, &ts);
}

static void begin_line(struct ws_log_line *l, enum ws_log_level level, const char *event,
                       const struct timespec *tsp)
{
    struct timespec ts = *tsp;
    l->len = 0;
    l->active = true;
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
        put_escaped(l, event, strlen(event), 0);
        puts_(l, "\"");
    } else {
        puts_(l, when);
        puts_(l, " level=");
        puts_(l, level_names[level]);
        puts_(l, " event=");
        put_escaped(l, event, strlen(event), 0);
    }
    if (worker > 0)
        ws_log_i64(l, "worker", worker);
}

void ws_log_str(struct ws_log_line *l, const char *k, const char *s, size_t n)
{
    if (!l->active || !key(l, k, 2))
        return;
    puts_(l, "\"");
    put_escaped(l, s, n, 1); /* a long value is cut, keeping room for its closing quote */
    puts_(l, "\"");
}

void ws_log_cstr(struct ws_log_line *l, const char *k, const char *s)
{
    ws_log_str(l, k, s ? s : "", s ? strlen(s) : 0);
}

void ws_log_u64(struct ws_log_line *l, const char *k, uint64_t v)
{
    if (!l->active)
        return;
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    if (key(l, k, (size_t)n))
        put(l, tmp, (size_t)n);
}

void ws_log_i64(struct ws_log_line *l, const char *k, int64_t v)
{
    if (!l->active)
        return;
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
    if (key(l, k, (size_t)n))
        put(l, tmp, (size_t)n);
}

void ws_log_ms(struct ws_log_line *l, const char *k, double seconds)
{
    if (!l->active)
        return;
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%.3f", seconds * 1000.0);
    if (key(l, k, (size_t)n))
        put(l, tmp, (size_t)n);
}

void ws_log_end(struct ws_log_line *l)
{
    if (!l->active)
        return;
    if (format == WS_LOG_JSON)
        l->buf[l->len++] = '}';
    l->buf[l->len++] = '\n';
    ssize_t ignored = write(STDERR_FILENO, l->buf, l->len);
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
