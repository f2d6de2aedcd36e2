/* Static files for --static DIR: decodes and checks the request target, resolves it strictly
 * inside DIR (realpath on both sides), answers If-Modified-Since and reads the file whole. It does
 * not do ranges, ETags, directory listings, compression or redirects; reads block. */
#include "ws/static.h"

#include "ws/buf.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ERROR_TYPE "text/plain; charset=utf-8"

static const char *const day_names[7] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
static const char *const day_long[7] = {"Sunday",   "Monday", "Tuesday", "Wednesday",
                                        "Thursday", "Friday", "Saturday"};
static const char *const month_names[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

/* ---- content types ---- */

static const struct {
    const char *ext;
    const char *type;
} types[] = {
    {"html", "text/html; charset=utf-8"},
    {"htm", "text/html; charset=utf-8"},
    {"css", "text/css; charset=utf-8"},
    {"js", "text/javascript; charset=utf-8"}, /* RFC 9239 §6 */
    {"mjs", "text/javascript; charset=utf-8"},
    {"json", "application/json"},
    {"txt", "text/plain; charset=utf-8"},
    {"svg", "image/svg+xml"},
    {"png", "image/png"},
    {"jpg", "image/jpeg"},
    {"jpeg", "image/jpeg"},
    {"gif", "image/gif"},
    {"ico", "image/x-icon"},
    {"webp", "image/webp"},
    {"wasm", "application/wasm"},
    {"woff2", "font/woff2"},
    {"map", "application/json"},
};

const char *ws_static_content_type(const char *name)
{
    const char *base = name ? strrchr(name, '/') : NULL;
    base = base ? base + 1 : name;
    const char *dot = base ? strrchr(base, '.') : NULL;
    if (dot) {
        for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
            if (strcasecmp(dot + 1, types[i].ext) == 0)
                return types[i].type;
        }
    }
    return "application/octet-stream";
}

/* ---- HTTP-date (RFC 9110 §5.6.7) ---- */

/* Days since 1970-01-01 of a proleptic Gregorian date (month 1-12); no time zone involved. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int days_in_month(int64_t y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    return m == 2 && leap ? 29 : days[m - 1];
}

/* A cursor over a field value: the value is a span, not a NUL-terminated string. */
struct cursor {
    const char *p;
    const char *end;
};

static bool eat(struct cursor *c, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, lit, n) != 0)
        return false;
    c->p += n;
    return true;
}

/* Exactly n digits. */
static bool digits(struct cursor *c, int n, int *out)
{
    if (c->end - c->p < n)
        return false;
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (c->p[i] < '0' || c->p[i] > '9')
            return false;
        v = v * 10 + (c->p[i] - '0');
    }
    c->p += n;
    *out = v;
    return true;
}

static bool eat_name(struct cursor *c, const char *const *names, int count, int *index)
{
    for (int i = 0; i < count; i++) {
        if (eat(c, names[i])) {
            *index = i;
            return true;
        }
    }
    return false;
}

/* time-of-day = hour ":" minute ":" second */
static bool time_of_day(struct cursor *c, int *h, int *mi, int *s)
{
    return digits(c, 2, h) && eat(c, ":") && digits(c, 2, mi) && eat(c, ":") && digits(c, 2, s);
}

/* The fields of an HTTP-date before they are checked and combined. */
struct date {
    int year, mon, day, h, mi, s;
};

/* IMF-fixdate = day-name "," SP 2DIGIT SP month SP 4DIGIT SP time-of-day SP "GMT" */
static bool imf_fixdate(struct cursor *c, struct date *d)
{
    int wday;
    return eat_name(c, day_names, 7, &wday) && eat(c, ", ") && digits(c, 2, &d->day) &&
           eat(c, " ") && eat_name(c, month_names, 12, &d->mon) && eat(c, " ") &&
           digits(c, 4, &d->year) && eat(c, " ") && time_of_day(c, &d->h, &d->mi, &d->s) &&
           eat(c, " GMT");
}

/* rfc850-date = day-name-l "," SP 2DIGIT "-" month "-" 2DIGIT SP time-of-day SP "GMT" */
static bool rfc850_date(struct cursor *c, int64_t now, struct date *d)
{
    int wday, yy;
    if (!(eat_name(c, day_long, 7, &wday) && eat(c, ", ") && digits(c, 2, &d->day) && eat(c, "-") &&
          eat_name(c, month_names, 12, &d->mon) && eat(c, "-") && digits(c, 2, &yy) &&
          eat(c, " ") && time_of_day(c, &d->h, &d->mi, &d->s) && eat(c, " GMT")))
        return false;
    /* RFC 9110 §5.6.7: a two-digit year more than 50 years in the future means the most recent
     * past year with the same last two digits. */
    int64_t cur = 1970 + now / 31556952; /* the average Gregorian year is close enough here */
    int64_t y = cur - cur % 100 + yy;
    if (y > cur + 50)
        y -= 100;
    d->year = (int)y;
    return true;
}

/* asctime-date = day-name SP month SP ( 2DIGIT / ( SP DIGIT ) ) SP time-of-day SP 4DIGIT */
static bool asctime_date(struct cursor *c, struct date *d)
{
    int wday;
    if (!(eat_name(c, day_names, 7, &wday) && eat(c, " ") &&
          eat_name(c, month_names, 12, &d->mon) && eat(c, " ")))
        return false;
    bool day_ok = eat(c, " ") ? digits(c, 1, &d->day) : digits(c, 2, &d->day);
    return day_ok && eat(c, " ") && time_of_day(c, &d->h, &d->mi, &d->s) && eat(c, " ") &&
           digits(c, 4, &d->year);
}

/* Parses the three formats a recipient MUST accept (RFC 9110 §5.6.7), names case-sensitive as
 * there. The whole value must be one date; the day name is not checked against the date. */
static bool parse_http_date(struct ws_span v, int64_t now, int64_t *out)
{
    struct date d;
    struct cursor c = {v.p, v.p + v.n};
    bool ok = imf_fixdate(&c, &d);
    if (!ok) {
        c = (struct cursor){v.p, v.p + v.n};
        ok = rfc850_date(&c, now, &d);
    }
    if (!ok) {
        c = (struct cursor){v.p, v.p + v.n};
        ok = asctime_date(&c, &d);
    }
    if (!ok || c.p != c.end)
        return false;
    int mon = d.mon + 1;
    if (d.day < 1 || d.day > days_in_month(d.year, mon) || d.h > 23 || d.mi > 59 || d.s > 60)
        return false;
    *out = days_from_civil(d.year, mon, d.day) * 86400 + d.h * 3600 + d.mi * 60 + d.s;
    return true;
}

/* Formats an IMF-fixdate (RFC 9110 §5.6.7) by hand: strftime's names follow the locale. */
static bool format_http_date(time_t t, char *out, size_t size)
{
    struct tm tm;
    if (!gmtime_r(&t, &tm) || tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999)
        return false;
    int n = snprintf(out, size, "%s, %02d %s %04d %02d:%02d:%02d GMT", day_names[tm.tm_wday],
                     tm.tm_mday, month_names[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                     tm.tm_sec);
    return n > 0 && (size_t)n < size;
}

/* ---- the request target ---- */

/* Turns the target's path into a relative path of checked segments in rel[0..size): query and
 * fragment cut, percent-decoded (RFC 3986 §2.1), "." and empty segments dropped. Decoding comes
 * first so "%2e%2e" and "..%2f" meet the same checks as "..". Returns 0 or an HTTP status. */
static int target_path(struct ws_span target, char *rel, size_t size, bool *trailing_slash)
{
    size_t n = 0;
    while (n < target.n && target.p[n] != '?' && target.p[n] != '#')
        n++;
    /* RFC 9112 §3.2.1: origin-form starts with "/"; absolute-form and "*" are not for us. */
    if (n == 0 || target.p[0] != '/')
        return 400;
    char path[PATH_MAX];
    size_t len = 0;
    bool too_long = false;
    for (size_t i = 0; i < n; i++) {
        char ch = target.p[i];
        if (ch == '%') {
            int hi = i + 2 < n ? ws_http_hexval(target.p[i + 1]) : -1;
            int lo = i + 2 < n ? ws_http_hexval(target.p[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return 400;
            ch = (char)(hi << 4 | lo);
            i += 2;
        }
        if (ch == '\0')
            return 400; /* a NUL would cut the name the kernel sees */
        if (len + 1 >= sizeof(path))
            too_long = true; /* keep checking the encoding: a 400 wins over the 404 */
        else
            path[len++] = ch;
    }
    if (too_long)
        return 404; /* longer than any path this system can open */
    *trailing_slash = path[len - 1] == '/';

    size_t out = 0;
    for (size_t i = 0; i < len;) {
        size_t j = i;
        while (j < len && path[j] != '/')
            j++;
        const char *seg = path + i;
        size_t seg_len = j - i;
        i = j + 1;
        if (seg_len == 0 || (seg_len == 1 && seg[0] == '.'))
            continue;
        /* ".." and hidden names (.git, .env): 404 rather than 403, so a probe learns nothing. */
        if (seg[0] == '.')
            return 404;
        if (out + seg_len + 2 > size)
            return 404;
        rel[out++] = '/';
        memcpy(rel + out, seg, seg_len);
        out += seg_len;
    }
    rel[out] = '\0';
    return 0;
}

/* ---- files ---- */

static int errno_status(int err)
{
    switch (err) {
    case ENOENT:
    case ENOTDIR:
    case ENAMETOOLONG:
    case ELOOP:
    case ENXIO:
        return 404;
    case EACCES:
    case EPERM:
        return 403;
    default:
        return 500;
    }
}

/* True when real (a realpath) is inside the realpath root or is root itself, and no component
 * below root is hidden: a symlink inside DIR must not lead to DIR/.git either. */
static bool inside(const char *root, const char *real)
{
    size_t n = strlen(root);
    if (n == 1 && root[0] == '/')
        n = 0; /* root is "/": every real path starts with it */
    else if (strncmp(real, root, n) != 0 || (real[n] != '\0' && real[n] != '/'))
        return false;
    for (const char *p = real + n; (p = strchr(p, '/')) != NULL;) {
        p++;
        if (*p == '.')
            return false;
    }
    return true;
}

/* Resolves path (root's real path + checked segments) and opens it as a regular file, a folder
 * standing for its index.html. Sets *fd and *st; returns 0 or an HTTP status. */
static int open_file(const char *root, char *path, size_t size, bool want_dir, int *fd,
                     struct stat *st)
{
    for (int tries = 0; tries < 2; tries++) {
        char real[PATH_MAX];
        if (!realpath(path, real))
            return errno_status(errno);
        if (!inside(root, real))
            return 404;
        /* O_NONBLOCK: opening a FIFO must not wait for a writer (we refuse it after fstat).
         * O_NOFOLLOW: realpath left no symlink, so one now means the tree changed under us. */
        int f = open(real, O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (f < 0)
            return errno_status(errno);
        if (fstat(f, st) != 0) {
            close(f);
            return 500;
        }
        if (S_ISREG(st->st_mode) && !want_dir) {
            *fd = f;
            return 0;
        }
        close(f);
        if (!S_ISDIR(st->st_mode) || tries > 0)
            return 404;
        int n = snprintf(path, size, "%s/index.html", real);
        if (n < 0 || (size_t)n >= size)
            return 404;
        want_dir = false;
    }
    return 404;
}

/* RFC 9110 §13.1.3 and §13.2.2: If-Modified-Since is evaluated only for GET and HEAD, only when
 * If-None-Match is absent, and only when it holds exactly one valid HTTP-date. True: answer 304. */
static bool not_modified(const struct ws_http_request *req, time_t mtime)
{
    const struct ws_span *v = ws_http_header(req, "If-Modified-Since");
    if (!v || ws_http_header_count(req, "If-Modified-Since") != 1 ||
        ws_http_header(req, "If-None-Match"))
        return false;
    int64_t since;
    if (!parse_http_date(*v, (int64_t)time(NULL), &since))
        return false;
    return (int64_t)mtime <= since;
}

static int read_all(int fd, char *body, size_t size, size_t *got)
{
    size_t n = 0;
    while (n < size) {
        ssize_t r = read(fd, body + n, size - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return 500;
        if (r == 0)
            break; /* shrank since fstat: send what is there, Content-Length stays honest */
        n += (size_t)r;
    }
    *got = n;
    return 0;
}

static void add_header(struct ws_static_reply *reply, const char *line)
{
    size_t used = strlen(reply->headers);
    size_t n = strlen(line);
    assert(used + n < sizeof(reply->headers));
    memcpy(reply->headers + used, line, n + 1);
}

static void serve(const char *root, const struct ws_http_request *req,
                  struct ws_static_reply *reply)
{
    bool get = req->method.n == 3 && memcmp(req->method.p, "GET", 3) == 0;
    bool head = req->method.n == 4 && memcmp(req->method.p, "HEAD", 4) == 0;
    /* RFC 9110 §9.1: methods are case-sensitive; §15.5.6: a 405 carries Allow. */
    if (!get && !head) {
        reply->status = 405;
        add_header(reply, "Allow: GET, HEAD\r\n");
        return;
    }

    char rel[PATH_MAX];
    bool want_dir = false;
    int status = target_path(req->target, rel, sizeof(rel), &want_dir);
    if (status) {
        reply->status = status;
        return;
    }

    char real_root[PATH_MAX];
    if (!realpath(root, real_root)) {
        reply->status = 500; /* DIR itself is gone: the server's problem, not the client's */
        return;
    }
    char path[PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s%s", real_root, rel);
    if (n < 0 || (size_t)n >= sizeof(path)) {
        reply->status = 404;
        return;
    }

    int fd = -1;
    struct stat st;
    status = open_file(real_root, path, sizeof(path), want_dir, &fd, &st);
    if (status) {
        reply->status = status;
        return;
    }
    if ((uintmax_t)st.st_size > WS_STATIC_MAX_FILE) {
        close(fd);
        reply->status = 413;
        return;
    }

    reply->content_type = ws_static_content_type(path);
    reply->body_len = (size_t)st.st_size;
    char date[40];
    if (format_http_date(st.st_mtime, date, sizeof(date))) {
        char line[64];
        snprintf(line, sizeof(line), "Last-Modified: %s\r\n", date);
        add_header(reply, line);
    }
    /* no-cache: stored, but revalidated each time (RFC 9111 §5.2.2.4), so a redeployed page
     * shows at once while unchanged assets cost a 304. */
    add_header(reply, "Cache-Control: no-cache\r\n");
    add_header(reply, "X-Content-Type-Options: nosniff\r\n");

    if (not_modified(req, st.st_mtime)) {
        close(fd);
        reply->status = 304;
        return;
    }
    if (get) {
        reply->body = ws_xmalloc(reply->body_len);
        status = read_all(fd, reply->body, reply->body_len, &reply->body_len);
        if (status) {
            close(fd);
            ws_static_reply_free(reply);
            reply->status = status;
            reply->content_type = ERROR_TYPE;
            reply->headers[0] = '\0';
            return;
        }
    }
    close(fd);
    reply->status = 200;
}

void ws_static_serve(const char *root, const struct ws_http_request *req,
                     struct ws_static_reply *reply)
{
    assert(root && req && reply);
    memset(reply, 0, sizeof(*reply));
    reply->content_type = ERROR_TYPE;
    serve(root, req, reply);
}

void ws_static_reply_free(struct ws_static_reply *reply)
{
    if (!reply)
        return;
    free(reply->body);
    reply->body = NULL;
    reply->body_len = 0;
}
