/* wsbench: a one-thread WebSocket load generator on libev for wsserver's benchmarks. Modes echo,
 * broadcast, idle, connect and chat; every reply is checked; one JSON object per run on stdout.
 * It is a measuring tool, not a conformance client: it speaks only what the scenarios need
 * (masked client frames with a fixed key, unfragmented data messages out, pong, close), over
 * TCP or TLS (--tls), with or without permessage-deflate (--deflate, RFC 7692). */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <zlib.h>

#define WB_RBUF_BYTES (256 * 1024) /* one shared read buffer: recv() never copies twice */
#define WB_HS_BYTES 2048           /* handshake response head */
#define WB_RAW_BYTES 512           /* control frames and the request, per connection */
#define WB_PREFIX_MAX 64           /* message bytes kept for the sequence/timestamp check */
#define WB_STORED_HEAD 5           /* --deflate: the stored block that carries the prefix */
#define WB_HEAD_MAX (14 + WB_STORED_HEAD + WB_PREFIX_MAX) /* header + mask + masked prefix */
#define WB_TLS_OUT 16384          /* --tls: bytes per SSL_write (one record) */
#define WB_ZOUT_BYTES (64 * 1024) /* --deflate: inflate output, shared */
#define WB_CHAT_CAP 16384         /* chat: bytes of each server message kept for the JSON check */
#define WB_MEMO_BYTES 4096        /* --deflate: compressed messages up to this size are memoized */
#define WB_MEMO_SLOTS 1024 /* direct-mapped: few enough collisions among the messages in flight */
#define WB_IOV_MAX 64
#define WB_MAX_MESSAGE ((uint64_t)64 << 20) /* larger server frames are a protocol error */

/* RFC 6455 §5.3: the client masks every frame; the key is fixed so payloads are masked once. */
static const uint8_t MASK[4] = {0x37, 0xfa, 0x21, 0x3d};
/* RFC 6455 §4.1: any 16-byte nonce, base64; fixed, its accept value is computed once. */
static const char KEY[] = "dGhlIHNhbXBsZSBub25jZQ==";
static const char GUID[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

enum mode { MODE_ECHO, MODE_BROADCAST, MODE_IDLE, MODE_CONNECT, MODE_CHAT, MODE_COUNT };
static const char *const MODE_NAMES[] = {"echo", "broadcast", "idle", "connect", "chat"};

#define WB_ERRORS(X)                                                                               \
    X(CONNECT, "connect")     /* connect() failed or refused */                                    \
    X(TLS, "tls")             /* the TLS handshake or a TLS record failed */                       \
    X(HANDSHAKE, "handshake") /* no 101, wrong accept key, extension answer, oversized head */     \
    X(PROTOCOL, "protocol")   /* a server frame breaks RFC 6455/7692 (mask, RSV, deflate data) */  \
    X(MISMATCH, "mismatch")   /* wrong length, opcode, sequence number or content */               \
    X(CLOSED, "closed")       /* the server closed or reset a connection unexpectedly */           \
    X(MISSING, "missing")     /* broadcast or chat deliveries a receiver never got */              \
    X(STALL, "stall")         /* no progress for --stall seconds */

enum wb_err {
#define X(id, name) ERR_##id,
    WB_ERRORS(X)
#undef X
        ERR_COUNT
};
static const char *const ERR_NAMES[] = {
#define X(id, name) name,
    WB_ERRORS(X)
#undef X
};

enum role { ROLE_ECHO, ROLE_SUB, ROLE_PUB, ROLE_IDLE, ROLE_CYCLE, ROLE_CHAT };
enum conn_state { CS_NONE, CS_CONNECTING, CS_TLS, CS_HANDSHAKE, CS_OPEN, CS_DEAD };

/* Log-linear latency histogram (ns): exact below 128, then 64 sub-buckets per power of two
 * (~1.6% resolution). Fixed size, so recording never allocates. */
#define HIST_SUB 64u
#define HIST_LINEAR 128u
#define HIST_BUCKETS (HIST_LINEAR + 57u * HIST_SUB)

struct hist {
    uint64_t n[HIST_BUCKETS];
    uint64_t count, max_ns;
    double sum_ns;
};

/* Incremental decoder for server frames: header bytes gathered here, payload streamed through. */
struct parser {
    uint8_t hdr[14];
    unsigned hdr_have, hdr_need;
    bool in_payload, fin, in_message, mismatch, compressed;
    uint8_t opcode, msg_opcode;
    uint64_t remaining; /* payload bytes left in this frame */
    uint64_t msg_off;   /* bytes of the current message so far (across fragments; inflated) */
    uint8_t prefix[WB_PREFIX_MAX];
    uint8_t ctl[125];
    unsigned ctl_len;
};

/* One queued data message: its own header and prefix (after the stored-block header with
 * --deflate); the rest is the shared masked template (compressed once with --deflate). */
struct outmsg {
    uint8_t head[WB_HEAD_MAX];
    uint32_t head_len;
};

struct bench;

struct conn {
    struct bench *b;
    ev_io io;
    int fd;
    enum conn_state state;
    enum role role;
    int events;
    uint64_t t_connect_ns;
    char *hs;
    size_t hs_len;
    uint8_t raw[WB_RAW_BYTES]; /* request and control frames, written before unstarted messages */
    size_t raw_len;
    struct outmsg *q; /* ring of queued messages */
    unsigned q_head, q_len, q_cap;
    size_t q_off; /* bytes of the first queued message already written */
    struct parser p;
    uint32_t send_seq, recv_seq, inflight; /* echo */
    uint64_t *sent_ns;                     /* echo: send time by seq % depth */
    uint32_t last_seq;                     /* subscriber: last sequence delivered */
    unsigned gen; /* bumped by every (re)start: events of an older socket are stale */
    bool subscribed, got_close;
    /* --tls */
    SSL *ssl;
    uint8_t *tout; /* bytes taken from the queue for SSL_write, retried as they are */
    size_t tout_len, tout_off;
    bool read_wants_write; /* SSL_read asked for writability */
    /* --deflate: what the server agreed to, and the inflater (made on the first RSV1 message) */
    bool pmd, pmd_reset;
    z_stream *inf;
    uint8_t *zmsg; /* the compressed message so far, while it fits WB_MEMO_BYTES */
    size_t zmsg_len;
    bool zstream; /* too large to memoize: inflated as it comes */
    /* chat */
    uint32_t room, slot; /* room i % rooms, member i / rooms */
    uint32_t *recv_next; /* next sequence number expected from each member of the room */
    uint8_t *msg;        /* the current server message (its first WB_CHAT_CAP bytes) */
    bool joined, join_sent;
};

struct opts {
    enum mode mode;
    struct sockaddr_in addr;
    const char *host, *path, *label;
    unsigned conns, depth, open_rate;
    size_t size;
    bool binary, verify_full, tls, deflate, json;
    const char *tls_ca;
    unsigned rooms, join_window;
    double rate; /* chat: messages per second per client */
    double duration_s, warmup_s, stall_s;
    uint64_t target; /* echo: stop after this many replies (0: use duration) */
    long server_pid;
};

struct bench {
    struct opts o;
    struct ev_loop *loop;
    struct conn *conns;
    unsigned nconns, next_open, opening, opened, subs_live, subs_ready;
    struct conn *pub;
    bool running, measuring, measured, finished, pub_dirty, draining;
    uint8_t *rbuf, *zout;
    SSL_CTX *ssl_ctx;
    char request[512];
    size_t request_len;
    char accept[32];
    uint8_t head[14]; /* frame header + mask of every data message of this run */
    size_t head_len;
    /* The message template: b->payload is a whole message as the application sees it (the
     * expected reply in echo and broadcast). Its first `span` bytes differ per message (the
     * sequence number at seq_off, a timestamp at ts_off, chat: the sender at from_off; -1 when
     * absent) and travel in each queued message's head; the rest is sent from wire_tail, masked
     * once (and compressed once with --deflate, after a stored block that carries the span). */
    /* --deflate: compressed messages already inflated and checked, by hash. Without context
     * takeover, the same compressed bytes always inflate to the same message: a broadcast's
     * 1000 identical copies are inflated once (a real client inflates each; we are measuring
     * the server, and the check stays exact: each copy is compared byte for byte). */
    struct memo {
        uint64_t hash, len;
        uint8_t *z;
        size_t zlen, zcap;
        uint8_t prefix[WB_PREFIX_MAX];
        bool mismatch, valid;
    } memo[WB_MEMO_SLOTS];
    uint64_t memo_hits, memo_misses;
    uint8_t *payload, *wire_tail;
    size_t span, wire_len, wire_tail_len, wire_pre_len;
    int seq_off, ts_off, from_off;
    uint8_t opcode;
    /* broadcast publisher window */
    uint32_t pub_next, pub_base;
    uint32_t *acks;   /* deliveries of each message in the window */
    uint64_t *pub_ns; /* publish time of each message in the window */
    uint64_t publishes;
    /* counters */
    uint64_t sent_total, recv_total, errors[ERR_COUNT];
    uint64_t win_msgs, win_bytes, win_publishes, win_in, win_out;
    /* chat */
    uint32_t *room_size;
    uint64_t chat_next, says, win_says, skipped, expected, delivered, dups, foreign, gaps;
    unsigned joined, join_next, join_inflight;
    uint64_t t_send0_ns, t_ready_ns;
    ev_timer chat_tick, drain_timer;
    uint64_t last_progress_ns, t_open_ns, t_win_ns, t_end_ns, t_all_open_ns;
    double cpu_client0, cpu_client1, cpu_server0, cpu_server1, cpu_machine0, cpu_machine1;
    /* idle: the server's memory after the warm-up cycle (before), at half the connections
     * (mid) and at all of them (after); VmRSS, and RssAnon without the code pages a first
     * handshake maps in (libcrypto), which do not grow with N */
    long rss_before_kb, rss_mid_kb, rss_after_kb;
    long anon_before_kb, anon_mid_kb, anon_after_kb;
    unsigned opened_mid;
    struct conn *warm; /* idle: one connect-upgrade-close cycle before the baseline */
    bool warming, mid_taken;
    struct hist hist;
    ev_timer warmup_timer, end_timer, watchdog;
    ev_prepare prepare;
};

static void conn_start(struct bench *b, struct conn *c);
static void warm_done(struct bench *b);
static void finish(struct bench *b, const char *why);
static int flush(struct conn *c);
static void pub_send_more(struct bench *b);
static void *xcalloc(size_t n, size_t size);
static void run_start(struct bench *b);

/* ---- time, CPU, /proc ---- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double cpu_self_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* utime + stime of every thread of PID (proc(5): fields 14 and 15, in clock ticks); -1 if gone. */
static double cpu_proc_s(long pid)
{
    char path[64], buf[1024];
    unsigned long ut = 0, st = 0;
    snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Busy CPU seconds of the whole machine, all CPUs (proc(5) /proc/stat: all but idle and iowait):
 * the share of neither wsbench nor the server tells how noisy the machine was. */
static double cpu_machine_s(void)
{
    unsigned long long v[8] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return -1;
    unsigned long long busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    return (double)busy / (double)sysconf(_SC_CLK_TCK);
}

/* VmRSS of PID in KiB (proc(5)); -1 if unknown. */
/* A field of /proc/PID/status in kB (VmRSS, RssAnon), -1 when unreadable. */
static long proc_status_kb(long pid, const char *field)
{
    char path[64], line[256];
    long kb = -1;
    size_t n = strlen(field);
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, field, n) == 0 && line[n] == ':' && sscanf(line + n + 1, "%ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static long rss_proc_kb(long pid)
{
    return proc_status_kb(pid, "VmRSS");
}

/* ---- histogram ---- */

static unsigned hist_index(uint64_t v)
{
    if (v < HIST_LINEAR)
        return (unsigned)v;
    unsigned e = 63u - (unsigned)__builtin_clzll(v); /* >= 7 */
    return HIST_LINEAR + (e - 7u) * HIST_SUB + (unsigned)((v >> (e - 6u)) & (HIST_SUB - 1u));
}

/* The middle of bucket i, in ns. */
static double hist_value(unsigned i)
{
    if (i < HIST_LINEAR)
        return i;
    unsigned k = i - HIST_LINEAR, e = k / HIST_SUB + 7u, sub = k % HIST_SUB;
    uint64_t low = (uint64_t)(HIST_SUB + sub) << (e - 6u), width = (uint64_t)1 << (e - 6u);
    return (double)low + (double)width / 2.0;
}

static void hist_add(struct hist *h, uint64_t ns)
{
    h->n[hist_index(ns)]++;
    h->count++;
    h->sum_ns += (double)ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

/* The value at quantile q, in microseconds; 0 when empty. */
static double hist_quantile_us(const struct hist *h, double q)
{
    if (h->count == 0)
        return 0;
    uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
    if (rank < 1)
        rank = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->n[i];
        if (seen >= rank) {
            double v = hist_value(i);
            return (v > (double)h->max_ns ? (double)h->max_ns : v) / 1000.0;
        }
    }
    return (double)h->max_ns / 1000.0;
}

/* ---- payload templates ---- */

static const char HEX[] = "0123456789abcdef";

static void hex_put(uint8_t *dst, uint64_t v, unsigned digits)
{
    for (unsigned i = digits; i-- > 0; v >>= 4)
        dst[i] = (uint8_t)HEX[v & 15];
}

/* Parses DIGITS lowercase hex digits; false on any other byte. */
static bool hex_get(const uint8_t *src, unsigned digits, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < digits; i++) {
        uint8_t ch = src[i];
        unsigned d;
        if (ch >= '0' && ch <= '9')
            d = ch - '0';
        else if (ch >= 'a' && ch <= 'f')
            d = ch - 'a' + 10u;
        else
            return false;
        v = v << 4 | d;
    }
    *out = v;
    return true;
}

/* RFC 6455 §5.2 client frame header: FIN, opcode, MASK bit, 7/16/64-bit length, masking key. */
static size_t frame_head(uint8_t *h, uint8_t opcode, uint64_t len)
{
    size_t n;
    h[0] = (uint8_t)(0x80u | opcode);
    if (len < 126) {
        h[1] = (uint8_t)(0x80u | len);
        n = 2;
    } else if (len <= 0xffff) {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t)(len >> 8);
        h[3] = (uint8_t)len;
        n = 4;
    } else {
        h[1] = 0x80 | 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    memcpy(h + n, MASK, 4);
    return n + 4;
}

/* RFC 6455 §5.3: payload byte i is XORed with key byte i mod 4; OFF is the payload offset. */
static void mask_copy(uint8_t *dst, const uint8_t *src, size_t len, size_t off)
{
    for (size_t i = 0; i < len; i++)
        dst[i] = src[i] ^ MASK[(off + i) & 3];
}

/* ---- connection output ---- */

static void io_want(struct conn *c, int events)
{
    if (c->events == events)
        return;
    ev_io_stop(c->b->loop, &c->io);
    ev_io_set(&c->io, c->fd, events);
    ev_io_start(c->b->loop, &c->io);
    c->events = events;
}

static void err_add(struct bench *b, enum wb_err e, struct conn *c, const char *what)
{
    if (b->errors[e]++ < 5)
        fprintf(stderr, "wsbench: %s error on connection %ld: %s\n", ERR_NAMES[e],
                c ? (long)(c - b->conns) : -1L, what);
}

static void conn_kill(struct conn *c)
{
    struct bench *b = c->b;
    if (c->ssl) { /* no close_notify: the server closes first, or we are giving up */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    c->tout_len = c->tout_off = 0;
    c->read_wants_write = false;
    if (c->inf)
        inflateReset(c->inf);
    c->zmsg_len = 0;
    c->zstream = false;
    if (c->fd >= 0) {
        ev_io_stop(b->loop, &c->io);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == CS_CONNECTING || c->state == CS_TLS || c->state == CS_HANDSHAKE)
        b->opening--;
    c->state = CS_DEAD;
    c->events = 0;
    c->raw_len = 0;
    c->q_len = 0;
    c->q_off = 0;
    if (c->role == ROLE_SUB && c->subscribed) {
        b->subs_live--;
        c->subscribed = false;
        pub_send_more(b); /* fewer acknowledgements are now enough */
    }
}

static void conn_fail(struct conn *c, enum wb_err e, const char *what)
{
    struct bench *b = c->b;
    err_add(b, e, c, what);
    conn_kill(c);
    if (c->role == ROLE_CYCLE && b->running && !b->finished)
        conn_start(b, c);
}

static bool raw_append(struct conn *c, const void *data, size_t len)
{
    if (c->raw_len + len > sizeof c->raw)
        return false;
    memcpy(c->raw + c->raw_len, data, len);
    c->raw_len += len;
    return true;
}

/* A masked control or short data frame into the raw buffer. */
static bool raw_frame(struct conn *c, uint8_t opcode, const uint8_t *payload, size_t len)
{
    uint8_t f[14 + 125];
    size_t h = frame_head(f, opcode, len);
    mask_copy(f + h, payload, len, 0);
    return raw_append(c, f, h + len);
}

/* What is queued, as iovecs: the raw buffer (only between messages), then messages. Sets
 * *raw_now to the raw bytes included. */
static int build_iov(struct conn *c, struct iovec *iov, size_t *raw_now)
{
    struct bench *b = c->b;
    size_t tail_len = b->wire_tail_len;
    const uint8_t *tail = b->wire_tail;
    int n = 0;
    *raw_now = 0;
    if (c->raw_len > 0 && c->q_off == 0) {
        *raw_now = c->raw_len;
        iov[n++] = (struct iovec){c->raw, c->raw_len};
    }
    for (unsigned k = 0; k < c->q_len && n + 2 <= WB_IOV_MAX; k++) {
        struct outmsg *m = &c->q[(c->q_head + k) % c->q_cap];
        size_t skip = k == 0 ? c->q_off : 0;
        if (skip < m->head_len) {
            iov[n++] = (struct iovec){m->head + skip, m->head_len - skip};
            skip = 0;
        } else {
            skip -= m->head_len;
        }
        if (tail_len > skip)
            iov[n++] = (struct iovec){(void *)(tail + skip), tail_len - skip};
    }
    return n;
}

/* W bytes of what build_iov offered are gone (written, or taken for SSL_write). */
static void advance(struct conn *c, size_t raw_now, size_t w)
{
    struct bench *b = c->b;
    size_t left = w;
    if (b->measuring)
        b->win_out += w;
    if (raw_now) {
        size_t r = left < raw_now ? left : raw_now;
        memmove(c->raw, c->raw + r, c->raw_len - r);
        c->raw_len -= r;
        left -= r;
    }
    while (left > 0) {
        struct outmsg *m = &c->q[c->q_head];
        size_t rest = m->head_len + b->wire_tail_len - c->q_off;
        if (left < rest) {
            c->q_off += left;
            break;
        }
        left -= rest;
        c->q_off = 0;
        c->q_head = (c->q_head + 1) % c->q_cap;
        c->q_len--;
    }
}

static bool has_output(const struct conn *c)
{
    return c->raw_len || c->q_len || c->tout_off < c->tout_len;
}

/* The OpenSSL error queue as one line (and emptied), or WHAT when it is empty. */
static const char *tls_error(const char *what)
{
    static char buf[200];
    unsigned long e, last = 0;
    while ((e = ERR_get_error()) != 0)
        last = e;
    if (!last)
        return what;
    ERR_error_string_n(last, buf, sizeof buf);
    return buf;
}

/* --tls: bytes move from the queue to c->tout (at most one record), then SSL_write sends them.
 * A write that wants to be retried is retried with the same bytes and length (SSL_write(3)),
 * so nothing queued later (a pong, a close) can slip in front of them. */
static int flush_tls(struct conn *c)
{
    for (;;) {
        if (c->tout_off == c->tout_len) {
            struct iovec iov[WB_IOV_MAX];
            size_t raw_now, len = 0;
            int n = build_iov(c, iov, &raw_now);
            if (n == 0) {
                if ((c->events & EV_WRITE) && !c->read_wants_write)
                    io_want(c, EV_READ);
                return 0;
            }
            if (!c->tout)
                c->tout = malloc(WB_TLS_OUT);
            if (!c->tout) {
                fprintf(stderr, "wsbench: out of memory\n");
                exit(1);
            }
            for (int i = 0; i < n && len < WB_TLS_OUT; i++) {
                size_t k = iov[i].iov_len < WB_TLS_OUT - len ? iov[i].iov_len : WB_TLS_OUT - len;
                memcpy(c->tout + len, iov[i].iov_base, k);
                len += k;
            }
            advance(c, raw_now, len);
            c->tout_off = 0;
            c->tout_len = len;
        }
        int w = SSL_write(c->ssl, c->tout + c->tout_off, (int)(c->tout_len - c->tout_off));
        if (w > 0) {
            c->tout_off += (size_t)w;
            continue;
        }
        int e = SSL_get_error(c->ssl, w);
        if (e == SSL_ERROR_WANT_WRITE) {
            io_want(c, EV_READ | EV_WRITE);
            return 0;
        }
        if (e == SSL_ERROR_WANT_READ) { /* the next readable event retries */
            io_want(c, EV_READ);
            return 0;
        }
        conn_fail(c, ERR_CLOSED, e == SSL_ERROR_SYSCALL ? strerror(errno) : tls_error("SSL_write"));
        return -1;
    }
}

/* Writes what is queued, with one sendmsg per batch (SSL_write per record with --tls). Returns
 * -1 when the connection died. */
static int flush(struct conn *c)
{
    struct bench *b = c->b;
    if (c->ssl)
        return flush_tls(c);
    for (;;) {
        struct iovec iov[WB_IOV_MAX];
        size_t total = 0, raw_now;
        int n = build_iov(c, iov, &raw_now);
        if (n == 0) {
            if (c->events & EV_WRITE)
                io_want(c, EV_READ);
            return 0;
        }
        for (int i = 0; i < n; i++)
            total += iov[i].iov_len;
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                io_want(c, EV_READ | EV_WRITE);
                return 0;
            }
            conn_fail(c,
                      c->state == CS_HANDSHAKE && c->raw_len == b->request_len ? ERR_CONNECT
                                                                               : ERR_CLOSED,
                      strerror(errno));
            return -1;
        }
        advance(c, raw_now, (size_t)w);
        if ((size_t)w < total) {
            io_want(c, EV_READ | EV_WRITE);
            return 0;
        }
    }
}

/* The first b->span bytes of message SEQ (timestamp TS, sender FROM where the template has
 * them) into DST. */
static void span_put(const struct bench *b, uint8_t *dst, uint64_t seq, uint64_t ts, uint64_t from)
{
    memcpy(dst, b->payload, b->span);
    hex_put(dst + b->seq_off, seq, 8);
    if (b->ts_off >= 0)
        hex_put(dst + b->ts_off, ts, 16);
    if (b->from_off >= 0)
        hex_put(dst + b->from_off, from, 5);
}

/* Queues one data message: its header, then (with --deflate, RFC 7692 §7.2.1 and RFC 1951
 * §3.2.4: a non-final stored block) its span, masked; the tail is shared. */
static void enqueue(struct conn *c, uint64_t seq, uint64_t ts)
{
    struct bench *b = c->b;
    if (c->q_len == c->q_cap) {
        err_add(b, ERR_PROTOCOL, c, "internal: send queue full");
        return;
    }
    uint8_t pre[WB_STORED_HEAD + WB_PREFIX_MAX];
    size_t k = 0;
    if (b->o.deflate) {
        pre[0] = 0x00; /* BFINAL 0, BTYPE 00, then padding to the byte boundary */
        pre[1] = (uint8_t)b->span;
        pre[2] = (uint8_t)(b->span >> 8);
        pre[3] = (uint8_t)~pre[1];
        pre[4] = (uint8_t)~pre[2];
        k = WB_STORED_HEAD;
    }
    span_put(b, pre + k, seq, ts, (uint64_t)(c - b->conns));
    struct outmsg *m = &c->q[(c->q_head + c->q_len) % c->q_cap];
    memcpy(m->head, b->head, b->head_len);
    mask_copy(m->head + b->head_len, pre, k + b->span, 0);
    m->head_len = (uint32_t)(b->head_len + k + b->span);
    c->q_len++;
    b->sent_total++;
}

static void echo_send(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    c->sent_ns[c->send_seq % b->o.depth] = t;
    enqueue(c, c->send_seq, t);
    c->send_seq++;
    c->inflight++;
}

/* ---- broadcast publisher window ---- */

/* Publishes while fewer than --depth messages are not yet delivered to every live subscriber. */
static void pub_send_more(struct bench *b)
{
    struct conn *p = b->pub;
    if (!p || p->state != CS_OPEN || !b->running || b->finished)
        return;
    while (b->pub_base != b->pub_next && b->acks[b->pub_base % b->o.depth] >= b->subs_live) {
        b->acks[b->pub_base % b->o.depth] = 0;
        b->pub_base++;
    }
    uint64_t t = now_ns();
    while (b->pub_next - b->pub_base < b->o.depth) {
        uint32_t seq = b->pub_next;
        b->acks[b->pub_next % b->o.depth] = 0;
        b->pub_ns[b->pub_next % b->o.depth] = t;
        b->pub_next++;
        b->publishes++;
        if (b->measuring)
            b->win_publishes++;
        enqueue(p, seq, t);
        b->pub_dirty = true;
    }
}

static void pub_ack(struct bench *b, uint32_t seq)
{
    if (seq - b->pub_base >= b->o.depth) /* already complete (a subscriber died meanwhile) */
        return;
    if (++b->acks[seq % b->o.depth] >= b->subs_live && seq == b->pub_base)
        pub_send_more(b);
}

/* ---- run phases ---- */

/* Idle mode keeps the handshake latencies of the opening phase; the other modes start afresh. */
static void window_begin(struct bench *b)
{
    if (b->o.mode != MODE_IDLE)
        memset(&b->hist, 0, sizeof b->hist);
    b->win_msgs = b->win_bytes = b->win_publishes = b->win_in = b->win_out = b->win_says = 0;
    b->measuring = b->measured = true;
    b->t_win_ns = now_ns();
    b->cpu_client0 = cpu_self_s();
    b->cpu_server0 = b->o.server_pid > 0 ? cpu_proc_s(b->o.server_pid) : -1;
    b->cpu_machine0 = cpu_machine_s();
}

static void window_end(struct bench *b)
{
    if (!b->measuring)
        return;
    b->measuring = false;
    b->t_end_ns = now_ns();
    b->cpu_client1 = cpu_self_s();
    b->cpu_server1 = b->o.server_pid > 0 ? cpu_proc_s(b->o.server_pid) : -1;
    b->cpu_machine1 = cpu_machine_s();
}

/* ---- chat ---- */

static void chat_send(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    enqueue(c, c->send_seq, t);
    c->send_seq++;
    b->says++;
    if (b->measuring)
        b->win_says++;
    b->expected += b->room_size[c->room]; /* the sender gets its own message too */
}

/* Every tick sends what the schedule owes: clients take turns in a fixed order, so each sends
 * every 1/rate s and the room traffic is spread evenly. A client whose queue is full (the
 * server does not read) skips its turn; skips are counted. */
static void on_chat_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct bench *b = w->data;
    (void)loop;
    (void)revents;
    if (!b->running || b->draining || b->finished)
        return;
    uint64_t t = now_ns();
    uint64_t due = (uint64_t)((double)(t - b->t_send0_ns) / 1e9 * b->o.rate * b->nconns);
    while (b->chat_next < due) {
        struct conn *c = &b->conns[b->chat_next++ % b->nconns];
        if (c->state == CS_OPEN && c->joined && c->q_len < c->q_cap) {
            chat_send(c, t);
            flush(c);
        } else {
            b->skipped++;
        }
    }
}

/* Deliveries still owed: what was sent to each live receiver minus what it got. Receivers that
 * died are not counted (their death is an error already). */
static uint64_t chat_owed(const struct bench *b)
{
    uint64_t owed = 0;
    for (unsigned i = 0; i < b->nconns; i++) {
        const struct conn *c = &b->conns[i];
        if (c->state != CS_OPEN || !c->joined)
            continue;
        for (uint32_t k = 0; k < b->room_size[c->room]; k++) {
            uint32_t sent = b->conns[c->room + k * b->o.rooms].send_seq;
            if (sent > c->recv_next[k])
                owed += sent - c->recv_next[k];
        }
    }
    return owed;
}

static void on_drain_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct bench *b = w->data;
    (void)loop;
    (void)revents;
    uint64_t owed = chat_owed(b);
    b->errors[ERR_MISSING] += owed;
    if (owed)
        fprintf(stderr, "wsbench: %llu chat deliveries missing %.1f s after the last message\n",
                (unsigned long long)owed, b->o.stall_s);
    finish(b, "duration");
}

/* The window is over: stop sending, wait until every message reached every member. */
static void chat_drain(struct bench *b)
{
    window_end(b);
    b->draining = true;
    ev_timer_stop(b->loop, &b->chat_tick);
    if (b->delivered + b->gaps >= b->expected) {
        finish(b, "duration");
        return;
    }
    ev_timer_init(&b->drain_timer, on_drain_timeout, b->o.stall_s, 0.);
    b->drain_timer.data = b;
    ev_timer_start(b->loop, &b->drain_timer);
}

static void on_end(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct bench *b = w->data;
    (void)loop;
    (void)revents;
    if (b->o.mode == MODE_CHAT)
        chat_drain(b);
    else
        finish(b, "duration");
}

static void on_warmup(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct bench *b = w->data;
    (void)revents;
    window_begin(b);
    if (b->o.target == 0) {
        ev_timer_init(&b->end_timer, on_end, b->o.duration_s, 0.);
        b->end_timer.data = b;
        ev_timer_start(loop, &b->end_timer);
    }
}

/* Every connection is ready: start the traffic, then the warm-up, then the window. */
static void run_start(struct bench *b)
{
    uint64_t t = now_ns();
    b->running = true;
    b->last_progress_ns = t;
    if (b->o.target)
        window_begin(b); /* a fixed message count is measured whole, from the first send */
    if (b->o.mode == MODE_ECHO) {
        for (unsigned i = 0; i < b->nconns; i++) {
            struct conn *c = &b->conns[i];
            if (c->state != CS_OPEN)
                continue;
            for (unsigned k = 0; k < b->o.depth; k++)
                if (b->o.target == 0 || b->sent_total < b->o.target)
                    echo_send(c, t);
            flush(c);
        }
    } else if (b->o.mode == MODE_BROADCAST) {
        pub_send_more(b);
    } else if (b->o.mode == MODE_CHAT) {
        b->t_ready_ns = b->t_send0_ns = t;
        ev_timer_init(&b->chat_tick, on_chat_tick, 0.002, 0.002);
        b->chat_tick.data = b;
        ev_timer_start(b->loop, &b->chat_tick);
    }
    if (b->o.target)
        return;
    ev_timer_init(&b->warmup_timer, on_warmup, b->o.warmup_s, 0.);
    b->warmup_timer.data = b;
    ev_timer_start(b->loop, &b->warmup_timer);
}

/* ---- incoming messages ---- */

static void progress(struct bench *b, uint64_t t)
{
    b->last_progress_ns = t;
}

/* The sequence number (and timestamp) in a received span, whose other bytes must be the
 * template's. */
static bool span_get(const struct bench *b, const uint8_t *got, uint64_t *seq, uint64_t *ts)
{
    uint8_t want[WB_PREFIX_MAX];
    *ts = 0;
    if (!hex_get(got + b->seq_off, 8, seq) || (b->ts_off >= 0 && !hex_get(got + b->ts_off, 16, ts)))
        return false;
    span_put(b, want, *seq, *ts, 0);
    return memcmp(want, got, b->span) == 0;
}

static void on_echo_reply(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    uint64_t seq, ts;
    if (c->inflight == 0) {
        conn_fail(c, ERR_MISMATCH, "reply without a request");
        return;
    }
    if (p->msg_opcode != b->opcode || p->msg_off != b->o.size || p->mismatch ||
        !span_get(b, p->prefix, &seq, &ts) || seq != c->recv_seq)
        err_add(b, ERR_MISMATCH, c, "echo reply differs from the request");
    if (b->measuring) {
        hist_add(&b->hist, t - c->sent_ns[c->recv_seq % b->o.depth]);
        b->win_msgs++;
        b->win_bytes += p->msg_off;
    }
    c->recv_seq++;
    c->inflight--;
    b->recv_total++;
    progress(b, t);
    if (b->running && !b->finished && (b->o.target == 0 || b->sent_total < b->o.target))
        echo_send(c, t);
    if (b->o.target && b->recv_total >= b->o.target)
        finish(b, "messages");
}

static void on_delivery(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    uint64_t seq, ts;
    if (!c->subscribed) {
        if (p->msg_off != 2 || memcmp(p->prefix, "ok", 2) != 0) {
            conn_fail(c, ERR_MISMATCH, "expected \"ok\" after \"sub\"");
            return;
        }
        c->subscribed = true;
        b->subs_live++;
        b->subs_ready++;
        progress(b, t);
        if (b->subs_ready == b->nconns - 1 && b->pub->state == CS_OPEN && !b->running)
            run_start(b);
        return;
    }
    if (p->msg_opcode != b->opcode || p->msg_off != b->o.size || p->mismatch ||
        !span_get(b, p->prefix, &seq, &ts)) {
        err_add(b, ERR_MISMATCH, c, "delivery differs from the published message");
        return;
    }
    uint32_t s = (uint32_t)seq, expect = c->last_seq + 1;
    if (s != expect) {
        if (s - expect > b->pub_next - expect) { /* older than expected: duplicate or reorder */
            err_add(b, ERR_MISMATCH, c, "delivery out of order");
            return;
        }
        b->errors[ERR_MISSING] += s - expect;
        for (uint32_t k = expect; k != s; k++)
            pub_ack(b, k);
    }
    c->last_seq = s;
    if (b->measuring) {
        hist_add(&b->hist, t > ts ? t - ts : 0);
        b->win_msgs++;
        b->win_bytes += p->msg_off;
    }
    b->recv_total++;
    progress(b, t);
    pub_ack(b, s);
}

/* ---- chat messages (JSON) ---- */

struct jfield {
    const char *key;
    const uint8_t *v; /* a string's raw bytes (escapes as sent), or a scalar's text */
    size_t len;
    bool found;
};

static size_t json_ws(const uint8_t *s, size_t i, size_t n)
{
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* The index just past the string that starts at s[i] == '"', or n + 1 when it does not end. */
static size_t json_str_end(const uint8_t *s, size_t i, size_t n)
{
    for (i++; i < n; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return n + 1;
}

/* Finds the members of the top-level object in s[0..n) named by F (RFC 8259; values are not
 * unescaped or validated further). Returns false when the text ends early or is not an object:
 * the fields found up to there stay found. */
static bool json_fields(const uint8_t *s, size_t n, struct jfield *f, int nf)
{
    size_t i = json_ws(s, 0, n);
    if (i >= n || s[i] != '{')
        return false;
    i = json_ws(s, i + 1, n);
    if (i < n && s[i] == '}')
        return true;
    while (i < n) {
        if (s[i] != '"')
            return false;
        size_t ke = json_str_end(s, i, n);
        if (ke > n)
            return false;
        const uint8_t *key = s + i + 1;
        size_t klen = ke - i - 2;
        i = json_ws(s, ke, n);
        if (i >= n || s[i] != ':')
            return false;
        i = json_ws(s, i + 1, n);
        if (i >= n)
            return false;
        size_t vs = i, ve;
        if (s[i] == '"') {
            ve = json_str_end(s, i, n);
            if (ve > n)
                return false;
        } else if (s[i] == '{' || s[i] == '[') {
            unsigned depth = 0;
            for (ve = i; ve < n; ve++) {
                if (s[ve] == '"') {
                    ve = json_str_end(s, ve, n) - 1;
                } else if (s[ve] == '{' || s[ve] == '[') {
                    depth++;
                } else if ((s[ve] == '}' || s[ve] == ']') && --depth == 0) {
                    ve++;
                    break;
                }
            }
            if (depth)
                return false;
        } else {
            for (ve = i; ve < n && s[ve] != ',' && s[ve] != '}' && s[ve] != ' '; ve++)
                ;
        }
        for (int k = 0; k < nf; k++)
            if (strlen(f[k].key) == klen && memcmp(f[k].key, key, klen) == 0) {
                bool str = s[vs] == '"';
                f[k].v = s + vs + str;
                f[k].len = ve - vs - 2 * str;
                f[k].found = true;
            }
        i = json_ws(s, ve, n);
        if (i >= n)
            return false;
        if (s[i] == '}')
            return true;
        if (s[i] != ',')
            return false;
        i = json_ws(s, i + 1, n);
    }
    return false;
}

static bool jeq(const struct jfield *f, const char *lit)
{
    return f->found && f->len == strlen(lit) && memcmp(f->v, lit, f->len) == 0;
}

static int room_name(char *dst, size_t cap, uint32_t room)
{
    return snprintf(dst, cap, "bench-%03u", room);
}

static int nick_name(char *dst, size_t cap, uint32_t idx)
{
    return snprintf(dst, cap, "u%05u", idx);
}

/* Clients join in connection order, at most --join-window joins unanswered at a time: each join
 * makes examples/chat broadcast the room list to every connection. */
static void chat_join_more(struct bench *b)
{
    while (b->join_inflight < b->o.join_window && b->join_next < b->nconns) {
        struct conn *c = &b->conns[b->join_next];
        if (c->state == CS_DEAD) {
            b->join_next++;
            continue;
        }
        if (c->state != CS_OPEN)
            return;
        char room[32], nick[32], join[125];
        room_name(room, sizeof room, c->room);
        nick_name(nick, sizeof nick, (uint32_t)(c - b->conns));
        int n = snprintf(join, sizeof join, "{\"type\":\"join\",\"room\":\"%s\",\"nick\":\"%s\"}",
                         room, nick);
        raw_frame(c, 0x1, (const uint8_t *)join, (size_t)n);
        c->join_sent = true;
        b->join_next++;
        b->join_inflight++;
        flush(c);
    }
}

/* One message of the examples/chat protocol. "message" deliveries are checked: from a member of
 * this room (room, nick and the sender index in the text agree), each member's messages in
 * order, each exactly once. */
static void on_chat_message(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    size_t n = p->msg_off < WB_CHAT_CAP ? (size_t)p->msg_off : WB_CHAT_CAP;
    struct jfield f[] = {{"type", NULL, 0, false},
                         {"room", NULL, 0, false},
                         {"nick", NULL, 0, false},
                         {"text", NULL, 0, false},
                         {"code", NULL, 0, false}};
    bool whole = json_fields(c->msg, n, f, 5);
    progress(b, t);
    if (p->msg_opcode != 0x1 || (!whole && p->msg_off <= WB_CHAT_CAP)) {
        err_add(b, ERR_MISMATCH, c, "chat: not a JSON object in a text message");
        return;
    }
    if (!f[0].found) {
        if (p->msg_off <= WB_CHAT_CAP)
            err_add(b, ERR_MISMATCH, c, "chat: message without a type");
        return; /* a long room list or history whose type lies beyond what we keep */
    }
    if (jeq(&f[0], "joined")) {
        if (!c->joined && c->join_sent) {
            c->joined = true;
            b->join_inflight--;
            if (++b->joined == b->nconns && !b->running)
                run_start(b);
            else
                chat_join_more(b);
        }
        return;
    }
    if (jeq(&f[0], "error")) {
        char what[96];
        snprintf(what, sizeof what, "chat: the server answered error %.*s",
                 f[4].found ? (int)(f[4].len < 40 ? f[4].len : 40) : 1,
                 f[4].found ? (const char *)f[4].v : "?");
        err_add(b, ERR_MISMATCH, c, what);
        return;
    }
    if (!jeq(&f[0], "message"))
        return; /* welcome, presence, rooms, typing */

    /* text: "FFFFF SSSSSSSS TTTTTTTTTTTTTTTT ...": sender index, its sequence number, send time */
    uint64_t from, seq, ts;
    char want[32];
    if (!f[1].found || !f[2].found || !f[3].found || f[3].len < 31 || !hex_get(f[3].v, 5, &from) ||
        !hex_get(f[3].v + 6, 8, &seq) || !hex_get(f[3].v + 15, 16, &ts) || from >= b->nconns) {
        err_add(b, ERR_MISMATCH, c, "chat: a message that is not one of ours");
        return;
    }
    struct conn *s = &b->conns[from];
    int wl = room_name(want, sizeof want, c->room);
    if (s->room != c->room || f[1].len != (size_t)wl || memcmp(f[1].v, want, (size_t)wl) != 0) {
        b->foreign++;
        err_add(b, ERR_MISMATCH, c, "chat: a message of another room");
        return;
    }
    wl = nick_name(want, sizeof want, (uint32_t)from);
    if (f[2].len != (size_t)wl || memcmp(f[2].v, want, (size_t)wl) != 0) {
        err_add(b, ERR_MISMATCH, c, "chat: the nick does not match the sender");
        return;
    }
    uint32_t *next = &c->recv_next[s->slot];
    if (seq < *next || seq >= s->send_seq) {
        b->dups++;
        err_add(b, ERR_MISMATCH, c,
                seq < *next ? "chat: a message delivered twice or out of order"
                            : "chat: a message that was never sent");
        return;
    }
    if (seq > *next) { /* skipped ones will not come: the server keeps a member's order */
        b->gaps += seq - *next;
        b->errors[ERR_MISSING] += seq - *next;
    }
    *next = (uint32_t)seq + 1;
    b->delivered++;
    if (b->measuring) {
        hist_add(&b->hist, t > ts ? t - ts : 0);
        b->win_msgs++;
        b->win_bytes += p->msg_off;
    }
    b->recv_total++;
    if (b->draining && b->delivered + b->gaps >= b->expected)
        finish(b, "duration");
}

static void on_message(struct conn *c, uint64_t t)
{
    switch (c->role) {
    case ROLE_ECHO:
        on_echo_reply(c, t);
        break;
    case ROLE_SUB:
        on_delivery(c, t);
        break;
    case ROLE_CHAT:
        on_chat_message(c, t);
        break;
    default:
        conn_fail(c, ERR_MISMATCH, "unexpected data message");
        break;
    }
}

/* Compares message bytes [off, off+len) with the template where the check applies: everything
 * after the span (--verify full), or its first and last 64 bytes (--verify sample). */
static void check_chunk(struct conn *c, uint64_t off, const uint8_t *data, size_t len)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    uint64_t lo = off, hi = off + len;
    if (lo < b->span)
        lo = b->span;
    if (hi > b->o.size)
        hi = b->o.size;
    if (lo >= hi)
        return;
    if (b->o.verify_full) {
        if (memcmp(data + (lo - off), b->payload + lo, hi - lo) != 0)
            p->mismatch = true;
        return;
    }
    uint64_t win[2][2] = {{b->span, b->span + 64}, {b->o.size - 64, b->o.size}};
    for (int i = 0; i < 2; i++) {
        uint64_t a = lo > win[i][0] ? lo : win[i][0], z = hi < win[i][1] ? hi : win[i][1];
        if (a < z && memcmp(data + (a - off), b->payload + a, z - a) != 0)
            p->mismatch = true;
    }
}

static void parser_reset(struct parser *p)
{
    memset(p, 0, sizeof *p);
    p->hdr_need = 2;
}

/* A whole control frame arrived. Returns -1 when the connection is gone. */
static int on_control(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    switch (p->opcode) {
    case 0x9: /* RFC 6455 §5.5.3: answer a ping with a pong carrying its payload */
        if (!raw_frame(c, 0xA, p->ctl, p->ctl_len))
            err_add(b, ERR_PROTOCOL, c, "too many pings queued");
        return 0;
    case 0xA:
        return 0;
    default: /* close */
        if (c->role == ROLE_CYCLE && !c->got_close) {
            /* RFC 6455 §5.5.1: the reply echoes our status code 1000 */
            if (p->ctl_len < 2 || p->ctl[0] != 0x03 || p->ctl[1] != 0xe8)
                err_add(b, ERR_MISMATCH, c, "close reply without status 1000");
            c->got_close = true;
            progress(b, t);
            return 0;
        }
        conn_fail(c, ERR_CLOSED, "close frame from the server");
        return -1;
    }
}

/* Header complete: RFC 6455 §5.2 checks on a server frame. Returns -1 on a protocol error. */
static int header_done(struct conn *c)
{
    struct parser *p = &c->p;
    uint8_t b0 = p->hdr[0], b1 = p->hdr[1];
    p->fin = b0 & 0x80;
    p->opcode = b0 & 0x0f;
    /* RFC 6455 §5.2: RSV bits only for a negotiated extension; RFC 7692 §6: RSV1 marks a
     * compressed message on its first frame, never on a continuation or control frame */
    bool rsv1 = b0 & 0x40;
    if ((b0 & 0x30) || (rsv1 && (!c->pmd || p->opcode == 0 || p->opcode >= 0x8)))
        goto bad;
    if (b1 & 0x80) /* RFC 6455 §5.1: a server must not mask its frames */
        goto bad;
    uint64_t len = b1 & 0x7f;
    if (len == 126)
        len = (uint64_t)p->hdr[2] << 8 | p->hdr[3];
    else if (len == 127)
        for (int i = 0; i < 8; i++)
            len = (i ? len << 8 : 0) | p->hdr[2 + i];
    if (p->opcode >= 0x8) {
        /* RFC 6455 §5.5: control frames are <= 125 bytes and not fragmented */
        if (p->opcode > 0xA || len > 125 || !p->fin)
            goto bad;
        p->ctl_len = 0;
    } else if (p->opcode == 0) {
        if (!p->in_message)
            goto bad;
    } else if (p->opcode <= 2) {
        if (p->in_message) /* RFC 6455 §5.4: no new message inside a fragmented one */
            goto bad;
        p->in_message = true;
        p->msg_opcode = p->opcode;
        p->msg_off = 0;
        p->mismatch = false;
        p->compressed = rsv1;
    } else {
        goto bad;
    }
    if (p->opcode < 0x8 && p->msg_off + len > WB_MAX_MESSAGE)
        goto bad;
    p->remaining = len;
    p->in_payload = true;
    return 0;
bad:
    conn_fail(c, ERR_PROTOCOL, "invalid frame header from the server");
    return -1;
}

/* Message bytes (inflated when compressed) in order: kept at the start, checked, counted. */
static int consume(struct conn *c, const uint8_t *data, size_t n)
{
    struct parser *p = &c->p;
    if (p->msg_off + n > WB_MAX_MESSAGE) {
        conn_fail(c, ERR_PROTOCOL, "message larger than 64 MiB");
        return -1;
    }
    if (c->role == ROLE_CHAT) {
        if (p->msg_off < WB_CHAT_CAP) {
            size_t k = WB_CHAT_CAP - (size_t)p->msg_off;
            memcpy(c->msg + p->msg_off, data, k < n ? k : n);
        }
    } else {
        if (p->msg_off < WB_PREFIX_MAX) {
            size_t k = WB_PREFIX_MAX - (size_t)p->msg_off;
            memcpy(p->prefix + p->msg_off, data, k < n ? k : n);
        }
        check_chunk(c, p->msg_off, data, n);
    }
    p->msg_off += n;
    return 0;
}

/* RFC 7692 §7.2.2: compressed payload bytes through the connection's inflater (raw DEFLATE,
 * window 15: any window the server uses fits). */
static int inflate_some(struct conn *c, const uint8_t *in, size_t n)
{
    struct bench *b = c->b;
    z_stream *z = c->inf;
    if (!z) {
        z = c->inf = calloc(1, sizeof *z);
        if (!z || inflateInit2(z, -15) != Z_OK) {
            fprintf(stderr, "wsbench: inflateInit2 failed\n");
            exit(1);
        }
    }
    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = (uInt)n;
    for (;;) {
        z->next_out = b->zout;
        z->avail_out = WB_ZOUT_BYTES;
        int rc = inflate(z, Z_SYNC_FLUSH);
        size_t got = WB_ZOUT_BYTES - z->avail_out;
        if (rc != Z_OK && rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && got == 0)) {
            conn_fail(c, ERR_PROTOCOL, z->msg ? z->msg : "invalid DEFLATE data");
            return -1;
        }
        if (got && consume(c, b->zout, got) < 0)
            return -1;
        if (rc == Z_STREAM_END) /* RFC 7692 §7.2.3.4: a final block ends this stream only */
            inflateReset(z);
        if (z->avail_in == 0 && got < WB_ZOUT_BYTES)
            return 0;
        if (got == 0 && rc == Z_BUF_ERROR) {
            conn_fail(c, ERR_PROTOCOL, "DEFLATE data that does not end");
            return -1;
        }
    }
}

/* A 64-bit hash of the compressed bytes (FNV-1a over 8-byte words, then the rest). */
static uint64_t memo_hash(const uint8_t *d, size_t n)
{
    uint64_t h = 0xcbf29ce484222325u;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, d + i, 8);
        h = (h ^ w) * 0x100000001b3u;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ d[i]) * 0x100000001b3u;
    return h ^ n;
}

/* Compressed payload bytes: kept for the memo while the message is small (and the inflater
 * starts afresh for each message), inflated as they come otherwise. */
static int compressed_in(struct conn *c, const uint8_t *data, size_t n)
{
    if (!c->zstream && c->pmd_reset && c->role != ROLE_CHAT && c->zmsg_len + n <= WB_MEMO_BYTES) {
        if (!c->zmsg)
            c->zmsg = xcalloc(WB_MEMO_BYTES, 1);
        memcpy(c->zmsg + c->zmsg_len, data, n);
        c->zmsg_len += n;
        return 0;
    }
    if (!c->zstream) {
        c->zstream = true;
        size_t held = c->zmsg_len;
        c->zmsg_len = 0;
        if (held && inflate_some(c, c->zmsg, held) < 0)
            return -1;
    }
    return inflate_some(c, data, n);
}

static int frame_done(struct conn *c, uint64_t t)
{
    struct parser *p = &c->p;
    p->in_payload = false;
    p->hdr_have = 0;
    p->hdr_need = 2;
    if (p->opcode >= 0x8)
        return on_control(c, t);
    if (!p->fin)
        return 0;
    p->in_message = false;
    if (p->compressed) {
        static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff}; /* RFC 7692 §7.2.2 */
        struct memo *m = NULL;
        if (!c->zstream) {
            uint64_t h = memo_hash(c->zmsg, c->zmsg_len);
            m = &c->b->memo[h % WB_MEMO_SLOTS];
            if (m->valid && m->hash == h && m->zlen == c->zmsg_len &&
                memcmp(m->z, c->zmsg, c->zmsg_len) == 0) {
                c->b->memo_hits++;
                p->msg_off = m->len;
                memcpy(p->prefix, m->prefix, WB_PREFIX_MAX);
                p->mismatch = m->mismatch;
                c->zmsg_len = 0;
                on_message(c, t);
                return c->state == CS_OPEN ? 0 : -1;
            }
            c->b->memo_misses++;
            if (inflate_some(c, c->zmsg, c->zmsg_len) < 0)
                return -1;
            m->valid = false;
            m->hash = h;
            if (m->zcap < c->zmsg_len) {
                free(m->z);
                m->z = xcalloc(c->zmsg_len, 1);
                m->zcap = c->zmsg_len;
            }
            memcpy(m->z, c->zmsg, c->zmsg_len);
            m->zlen = c->zmsg_len;
        }
        if (inflate_some(c, tail, 4) < 0)
            return -1;
        if (c->pmd_reset) /* server_no_context_takeover: the next message starts afresh */
            inflateReset(c->inf);
        if (m) {
            m->len = p->msg_off;
            memcpy(m->prefix, p->prefix, WB_PREFIX_MAX);
            m->mismatch = p->mismatch;
            m->valid = true;
        }
        c->zmsg_len = 0;
        c->zstream = false;
    }
    on_message(c, t);
    return c->state == CS_OPEN ? 0 : -1;
}

/* Feeds received bytes through the frame decoder. Returns -1 when the connection is gone. */
static int parse(struct conn *c, const uint8_t *data, size_t len, uint64_t t)
{
    struct parser *p = &c->p;
    while (len > 0) {
        if (!p->in_payload) {
            while (len > 0 && p->hdr_have < p->hdr_need) {
                p->hdr[p->hdr_have++] = *data++;
                len--;
                if (p->hdr_have == 2) {
                    unsigned l7 = p->hdr[1] & 0x7f;
                    p->hdr_need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
                }
            }
            if (p->hdr_have < p->hdr_need)
                return 0;
            if (header_done(c) < 0)
                return -1;
            if (p->remaining == 0 && frame_done(c, t) < 0)
                return -1;
            continue;
        }
        size_t n = p->remaining < len ? (size_t)p->remaining : len;
        if (p->opcode >= 0x8) {
            memcpy(p->ctl + p->ctl_len, data, n);
            p->ctl_len += (unsigned)n;
        } else if ((p->compressed ? compressed_in(c, data, n) : consume(c, data, n)) < 0) {
            return -1;
        }
        data += n;
        len -= n;
        p->remaining -= n;
        if (p->remaining == 0 && frame_done(c, t) < 0)
            return -1;
    }
    return 0;
}

/* ---- handshake ---- */

static void on_open(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    c->state = CS_OPEN;
    b->opening--;
    b->opened++;
    progress(b, t);
    if ((b->o.mode == MODE_IDLE && c != b->warm) || (b->measuring && b->o.mode == MODE_CONNECT))
        hist_add(&b->hist, t - c->t_connect_ns);
    switch (c->role) {
    case ROLE_SUB: {
        static const uint8_t sub[] = "sub";
        raw_frame(c, 0x1, sub, 3);
        flush(c);
        break;
    }
    case ROLE_CYCLE: {
        static const uint8_t code[2] = {0x03, 0xe8}; /* 1000 */
        raw_frame(c, 0x8, code, 2);
        flush(c);
        break;
    }
    case ROLE_PUB:
        if (b->subs_ready == b->nconns - 1 && !b->running)
            run_start(b);
        break;
    case ROLE_CHAT:
        chat_join_more(b);
        break;
    default:
        break;
    }
}

/* The value of header NAME (lowercase, with the colon) in the head, trimmed; names are
 * case-insensitive. NULL when absent. */
static const char *header_value(const char *head, size_t len, const char *name, size_t *vlen)
{
    size_t name_len = strlen(name);
    const char *end = head + len;
    for (const char *line = head; line < end;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        if (!nl)
            break;
        if ((size_t)(nl - line) > name_len && strncasecmp(line, name, name_len) == 0) {
            const char *v = line + name_len, *ve = nl;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = nl + 1;
    }
    return NULL;
}

/* RFC 6455 §4.2.2: Sec-WebSocket-Accept carries the value computed from our key. */
static bool accept_ok(struct bench *b, const char *head, size_t len)
{
    size_t vl;
    const char *v = header_value(head, len, "sec-websocket-accept:", &vl);
    return v && vl == strlen(b->accept) && memcmp(v, b->accept, vl) == 0;
}

/* RFC 7692 §7.1: the server's answer to our offer. Returns NULL when it is acceptable (and
 * records it), or what is wrong. */
static const char *extensions_ok(struct conn *c, const char *head, size_t len)
{
    struct bench *b = c->b;
    size_t vl;
    const char *v = header_value(head, len, "sec-websocket-extensions:", &vl);
    c->pmd = c->pmd_reset = false;
    if (!v)
        return b->o.deflate ? "the server declined permessage-deflate" : NULL;
    if (!b->o.deflate)
        return "an extension we did not offer";
    char ext[256];
    snprintf(ext, sizeof ext, "%.*s", (int)(vl < sizeof ext - 1 ? vl : sizeof ext - 1), v);
    char *save = NULL, *tok = strtok_r(ext, ";", &save);
    if (!tok || strcmp(tok, "permessage-deflate") != 0)
        return "an extension we did not offer";
    while ((tok = strtok_r(NULL, ";", &save)) != NULL) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        char *e = tok + strlen(tok);
        while (e > tok && (e[-1] == ' ' || e[-1] == '\t'))
            *--e = 0;
        int bits;
        if (strcmp(tok, "server_no_context_takeover") == 0) {
            c->pmd_reset = true;
        } else if (strcmp(tok, "client_no_context_takeover") == 0) {
            /* we compress every message on its own anyway */
        } else if (sscanf(tok, "server_max_window_bits=%d", &bits) == 1 && bits >= 8 &&
                   bits <= 15) {
            /* our inflater's window (15) holds any smaller one */
        } else if (sscanf(tok, "client_max_window_bits=%d", &bits) == 1 && bits >= 8 &&
                   bits <= 15) {
            /* a message never refers further back than its own start */
            if (b->o.size > ((size_t)1 << bits))
                return "client_max_window_bits smaller than our messages";
        } else {
            return "a permessage-deflate parameter we do not know";
        }
    }
    c->pmd = true;
    return NULL;
}

/* Bytes read while waiting for the 101. Returns -1 when the connection is gone. */
static int handshake_input(struct conn *c, const uint8_t *data, size_t len, uint64_t t)
{
    struct bench *b = c->b;
    size_t room = WB_HS_BYTES - 1 - c->hs_len, take = len < room ? len : room;
    size_t old = c->hs_len;
    memcpy(c->hs + c->hs_len, data, take);
    c->hs_len += take;
    size_t from = old > 3 ? old - 3 : 0;
    char *e = memmem(c->hs + from, c->hs_len - from, "\r\n\r\n", 4);
    if (!e) {
        if (c->hs_len == WB_HS_BYTES - 1) {
            conn_fail(c, ERR_HANDSHAKE, "response head too large");
            return -1;
        }
        return 0;
    }
    size_t head_len = (size_t)(e - c->hs) + 4;
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0 || !accept_ok(b, c->hs, head_len)) {
        char line[80];
        size_t ll = 0;
        while (ll < head_len && ll < sizeof line - 1 && c->hs[ll] != '\r' && c->hs[ll] != '\n')
            ll++;
        snprintf(line, sizeof line, "%.*s", (int)ll, c->hs);
        conn_fail(c, ERR_HANDSHAKE, line);
        return -1;
    }
    const char *why = extensions_ok(c, c->hs, head_len);
    if (why) {
        conn_fail(c, ERR_HANDSHAKE, why);
        return -1;
    }
    c->hs_len = 0;
    on_open(c, t);
    if (c->state != CS_OPEN)
        return -1;
    size_t used = head_len - old; /* bytes of DATA that belonged to the head */
    return parse(c, data + used, len - used, t);
}

/* ---- libev callbacks ---- */

/* The server ended the stream (FIN, or TLS close_notify). */
static void on_eof(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    if (c->role == ROLE_CYCLE && c->got_close) {
        /* RFC 6455 §7.1.1: the server closes the TCP connection first */
        if (b->measuring)
            b->win_msgs++;
        b->recv_total++;
        progress(b, t);
        conn_kill(c);
        if (c == b->warm)
            warm_done(b);
        else if (b->running && !b->finished)
            conn_start(b, c);
    } else {
        conn_fail(c, ERR_CLOSED, "connection closed by the server");
    }
}

/* Received bytes (plaintext with --tls). Returns -1 when the connection is gone. */
static int on_bytes(struct conn *c, size_t n, uint64_t t)
{
    struct bench *b = c->b;
    if (b->measuring)
        b->win_in += n;
    return c->state == CS_HANDSHAKE ? handshake_input(c, b->rbuf, n, t) : parse(c, b->rbuf, n, t);
}

static void on_readable(struct conn *c)
{
    struct bench *b = c->b;
    if (c->ssl) {
        /* until SSL_read wants more from the socket: a record it holds would not wake us */
        c->read_wants_write = false;
        for (;;) {
            int n = SSL_read(c->ssl, b->rbuf, WB_RBUF_BYTES);
            if (n <= 0) {
                int e = SSL_get_error(c->ssl, n);
                if (e == SSL_ERROR_WANT_READ)
                    break;
                if (e == SSL_ERROR_WANT_WRITE) {
                    c->read_wants_write = true;
                    io_want(c, EV_READ | EV_WRITE);
                    break;
                }
                if (e == SSL_ERROR_ZERO_RETURN) /* close_notify, or EOF (IGNORE_UNEXPECTED_EOF) */
                    on_eof(c, now_ns());
                else
                    conn_fail(c, ERR_CLOSED,
                              e == SSL_ERROR_SYSCALL ? strerror(errno) : tls_error("SSL_read"));
                return;
            }
            if (on_bytes(c, (size_t)n, now_ns()) < 0)
                return;
        }
    } else {
        for (;;) {
            ssize_t n = recv(c->fd, b->rbuf, WB_RBUF_BYTES, 0);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK)
                    conn_fail(c, ERR_CLOSED, strerror(errno));
                return;
            }
            if (n == 0) {
                on_eof(c, now_ns());
                return;
            }
            if (on_bytes(c, (size_t)n, now_ns()) < 0)
                return;
            if ((size_t)n < WB_RBUF_BYTES)
                break;
        }
    }
    if (has_output(c))
        flush(c);
}

/* --tls: one step of the client handshake (non-blocking; libev says when to go on). Then the
 * HTTP upgrade request goes out. Returns -1 when the connection is gone. */
static int tls_step(struct conn *c)
{
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        c->state = CS_HANDSHAKE;
        io_want(c, EV_READ);
        return flush(c);
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ) {
        io_want(c, EV_READ);
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        io_want(c, EV_WRITE);
        return 0;
    }
    int err = errno;
    if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)
        conn_fail(c, err == ECONNREFUSED ? ERR_CONNECT : ERR_TLS,
                  err ? strerror(err) : "connection closed during the TLS handshake");
    else
        conn_fail(c, ERR_TLS, tls_error("TLS handshake failed"));
    return -1;
}

static void open_more(struct bench *b);

static void on_io(struct ev_loop *loop, ev_io *w, int revents)
{
    struct conn *c = w->data;
    struct bench *b = c->b;
    (void)loop;
    if (c->state == CS_CONNECTING) {
        /* Writable: connected, or failed, which the first send reports (no SO_ERROR call:
         * connect mode pays every system call once per cycle). */
        if (b->ssl_ctx) {
            c->ssl = SSL_new(b->ssl_ctx);
            if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1) {
                fprintf(stderr, "wsbench: %s\n", tls_error("SSL_new failed"));
                exit(1);
            }
            SSL_set_connect_state(c->ssl);
            if (b->o.tls_ca) /* the certificate must name the address we connect to */
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), b->o.host);
            c->state = CS_TLS;
            if (tls_step(c) < 0)
                open_more(b);
            return;
        }
        c->state = CS_HANDSHAKE;
        io_want(c, EV_READ);
        if (flush(c) < 0)
            open_more(b);
        return;
    }
    if (c->state == CS_TLS) {
        if (tls_step(c) < 0)
            open_more(b);
        return;
    }
    unsigned gen = c->gen;
    if ((revents & EV_READ) || (c->read_wants_write && (revents & EV_WRITE)))
        on_readable(c);
    if (c->gen == gen && c->state != CS_DEAD && (revents & EV_WRITE))
        flush(c);
    if (b->next_open < b->nconns || !b->running)
        open_more(b);
}

/* Starts (or restarts, in connect mode) connection C: non-blocking connect, request queued. */
static void conn_start(struct bench *b, struct conn *c)
{
    parser_reset(&c->p);
    c->gen++;
    c->hs_len = 0;
    c->raw_len = 0;
    c->got_close = false;
    c->t_connect_ns = now_ns();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) {
        err_add(b, ERR_CONNECT, c, strerror(errno));
        c->state = CS_DEAD;
        return;
    }
    /* Pipelined messages must not wait for ACKs (Nagle); a connect cycle writes one frame at a
     * time, each after the server's answer, so it spares the call. */
    int one = 1;
    if (c->role != ROLE_CYCLE || b->ssl_ctx) /* TLS: Finished and the request go back to back */
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    raw_append(c, b->request, b->request_len);
    b->opening++;
    c->state = CS_CONNECTING;
    c->events = EV_WRITE;
    ev_io_init(&c->io, on_io, c->fd, EV_WRITE);
    c->io.data = c;
    ev_io_start(b->loop, &c->io);
    if (connect(c->fd, (struct sockaddr *)&b->o.addr, sizeof b->o.addr) < 0 &&
        errno != EINPROGRESS) {
        err_add(b, ERR_CONNECT, c, strerror(errno)); /* no restart here: no retry loop */
        conn_kill(c);
    }
}

/* Opens connections, at most --open-rate handshakes at a time. Idle mode opens half of them,
 * samples the server's memory, then opens the rest. */
static void open_more(struct bench *b)
{
    if (b->warming)
        return;
    unsigned upto = b->o.mode == MODE_IDLE && !b->mid_taken ? b->nconns / 2 : b->nconns;
    while (b->next_open < upto && b->opening < b->o.open_rate && !b->finished)
        conn_start(b, &b->conns[b->next_open++]);
    if (upto < b->nconns && b->next_open == upto && b->opening == 0 && !b->finished) {
        b->mid_taken = true;
        b->opened_mid = b->opened;
        if (b->o.server_pid > 0) {
            b->rss_mid_kb = rss_proc_kb(b->o.server_pid);
            b->anon_mid_kb = proc_status_kb(b->o.server_pid, "RssAnon");
        }
        open_more(b);
        return;
    }
    if (b->o.mode == MODE_IDLE && !b->running && b->next_open == b->nconns && b->opening == 0) {
        b->t_all_open_ns = now_ns();
        run_start(b);
    }
    if (b->o.mode == MODE_ECHO && !b->running && b->next_open == b->nconns && b->opening == 0)
        run_start(b);
}

/* Idle mode's warm-up cycle is over: what the first handshake pages in (libcrypto's code and
 * tables, the first chunks of each size) is in the baseline, not counted per connection. */
static void warm_done(struct bench *b)
{
    b->warming = false;
    b->opened = 0;
    if (b->o.server_pid > 0) {
        usleep(50000); /* the server frees the closed connection on its next loop pass */
        b->rss_before_kb = rss_proc_kb(b->o.server_pid);
        b->anon_before_kb = proc_status_kb(b->o.server_pid, "RssAnon");
    }
    b->t_open_ns = now_ns();
    open_more(b);
}

static void on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct bench *b = w->data;
    (void)loop;
    (void)revents;
    if (b->pub_dirty && b->pub && b->pub->state == CS_OPEN) {
        b->pub_dirty = false;
        flush(b->pub);
    }
}

/* One connection that stopped answering is an error even while the others go on: a handshake,
 * an echo reply, a broadcast delivery or a close reply that is --stall seconds late. */
static void check_late(struct bench *b, uint64_t t)
{
    uint64_t limit = (uint64_t)(b->o.stall_s * 1e9);
    for (unsigned i = 0; i < b->nconns; i++) {
        struct conn *c = &b->conns[i];
        const char *what = NULL;
        if (c->state == CS_CONNECTING || c->state == CS_TLS || c->state == CS_HANDSHAKE) {
            if (t - c->t_connect_ns > limit)
                what = "no handshake response";
        } else if (c->state != CS_OPEN || !b->running) {
            continue;
        } else if (c->role == ROLE_ECHO) {
            if (c->inflight > 0 && t - c->sent_ns[c->recv_seq % b->o.depth] > limit)
                what = "no echo reply";
        } else if (c->role == ROLE_SUB) {
            if (c->subscribed && b->pub_base != b->pub_next &&
                (int32_t)(b->pub_base - c->last_seq) >= 1 &&
                t - b->pub_ns[b->pub_base % b->o.depth] > limit)
                what = "no broadcast delivery";
        } else if (c->role == ROLE_CYCLE) {
            if (t - c->t_connect_ns > limit)
                what = "no close reply";
        }
        if (what)
            conn_fail(c, ERR_STALL, what);
    }
}

static void on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct bench *b = w->data;
    (void)loop;
    (void)revents;
    uint64_t t = now_ns();
    check_late(b, t);
    if ((double)(t - b->last_progress_ns) / 1e9 > b->o.stall_s) {
        char what[96];
        snprintf(what, sizeof what, "no progress for %.1f s (%u of %u connections open)",
                 (double)(t - b->last_progress_ns) / 1e9, b->opened, b->nconns);
        err_add(b, ERR_STALL, NULL, what);
        finish(b, "stall");
    }
}

/* ---- report ---- */

static void report(struct bench *b, const char *why)
{
    const struct opts *o = &b->o;
    double win_s = b->measured ? (double)(b->t_end_ns - b->t_win_ns) / 1e9 : 0;
    double rate = win_s > 0 ? (double)b->win_msgs / win_s : 0;
    double ccpu = b->measured ? b->cpu_client1 - b->cpu_client0 : 0;
    double scpu = b->measured && b->cpu_server0 >= 0 && b->cpu_server1 >= 0
                      ? b->cpu_server1 - b->cpu_server0
                      : -1;
    uint64_t errs = 0;
    for (int i = 0; i < ERR_COUNT; i++)
        errs += b->errors[i];

    printf("{\"mode\":\"%s\"", MODE_NAMES[o->mode]);
    if (o->label) {
        printf(",\"label\":\"");
        for (const char *s = o->label; *s; s++)
            if (*s != '"' && *s != '\\' && (unsigned char)*s >= 0x20)
                putchar(*s);
        printf("\"");
    }
    printf(",\"connections\":%u,\"size\":%zu,\"binary\":%s,\"depth\":%u", o->conns, o->size,
           o->binary ? "true" : "false", o->depth);
    printf(",\"tls\":%s,\"deflate\":%s,\"json\":%s", o->tls ? "true" : "false",
           o->deflate ? "true" : "false", o->json ? "true" : "false");
    if (o->deflate) /* what each of our messages weighs compressed: stored span + deflated rest */
        printf(",\"sent_payload_bytes\":%zu,\"inflated\":%llu,\"inflate_memo_hits\":%llu",
               b->wire_len, (unsigned long long)b->memo_misses, (unsigned long long)b->memo_hits);
    printf(",\"warmup_s\":%g,\"duration_s\":%.3f,\"end\":\"%s\"", o->target ? 0 : o->warmup_s,
           win_s, why);
    printf(",\"messages\":%llu,\"msgs_per_s\":%.1f,\"mb_per_s\":%.3f",
           (unsigned long long)b->win_msgs, rate,
           win_s > 0 ? (double)b->win_bytes / win_s / 1e6 : 0);
    /* WebSocket bytes (frame headers + payload as sent; under TLS, the plaintext) per message,
     * delivery or handshake of the window, both directions */
    printf(",\"ws_bytes_in_per_msg\":%.1f,\"ws_bytes_out_per_msg\":%.1f",
           b->win_msgs ? (double)b->win_in / (double)b->win_msgs : 0,
           b->win_msgs ? (double)b->win_out / (double)b->win_msgs : 0);
    const struct hist *h = &b->hist;
    printf(",\"latency_us\":{\"p50\":%.1f,\"p99\":%.1f,\"p999\":%.1f,\"max\":%.1f,\"mean\":%.1f,"
           "\"samples\":%llu}",
           hist_quantile_us(h, 0.5), hist_quantile_us(h, 0.99), hist_quantile_us(h, 0.999),
           (double)h->max_ns / 1000.0, h->count ? h->sum_ns / (double)h->count / 1000.0 : 0,
           (unsigned long long)h->count);
    printf(",\"errors\":{\"total\":%llu", (unsigned long long)errs);
    for (int i = 0; i < ERR_COUNT; i++)
        printf(",\"%s\":%llu", ERR_NAMES[i], (unsigned long long)b->errors[i]);
    printf("}");
    printf(",\"client_cpu_s\":%.3f,\"client_cpu_pct\":%.1f", ccpu,
           win_s > 0 ? 100.0 * ccpu / win_s : 0);
    printf(",\"client_cpu_us_per_msg\":%.3f", b->win_msgs ? ccpu * 1e6 / (double)b->win_msgs : 0);
    if (scpu >= 0)
        printf(",\"server_pid\":%ld,\"server_cpu_s\":%.3f,\"server_cpu_pct\":%.1f,"
               "\"server_cpu_us_per_msg\":%.3f",
               o->server_pid, scpu, win_s > 0 ? 100.0 * scpu / win_s : 0,
               b->win_msgs ? scpu * 1e6 / (double)b->win_msgs : 0);
    else
        printf(",\"server_cpu_s\":null,\"server_cpu_us_per_msg\":null");
    if (win_s > 0 && b->cpu_machine0 >= 0 && b->cpu_machine1 >= 0) {
        /* 100 = one CPU busy; "other" is what neither wsbench nor the server used */
        double mcpu = b->cpu_machine1 - b->cpu_machine0;
        double other = mcpu - ccpu - (scpu > 0 ? scpu : 0);
        printf(",\"machine_cpu_pct\":%.1f,\"other_cpu_pct\":%.1f", 100.0 * mcpu / win_s,
               other > 0 ? 100.0 * other / win_s : 0.0);
    }
    if (o->mode == MODE_BROADCAST)
        printf(",\"subscribers\":%u,\"publishes\":%llu,\"publishes_per_s\":%.1f", o->conns,
               (unsigned long long)b->win_publishes,
               win_s > 0 ? (double)b->win_publishes / win_s : 0);
    if (o->mode == MODE_CHAT)
        printf(",\"rooms\":%u,\"rate_per_client\":%g,\"says\":%llu,\"says_per_s\":%.1f,"
               "\"server_cpu_us_per_say\":%.3f,\"setup_s\":%.3f,\"sent_total\":%llu,"
               "\"deliveries_expected\":%llu,\"deliveries\":%llu,\"missing\":%llu,"
               "\"duplicates\":%llu,\"other_room\":%llu,\"skipped_turns\":%llu",
               o->rooms, o->rate, (unsigned long long)b->win_says,
               win_s > 0 ? (double)b->win_says / win_s : 0,
               scpu >= 0 && b->win_says ? scpu * 1e6 / (double)b->win_says : 0,
               b->t_ready_ns ? (double)(b->t_ready_ns - b->t_open_ns) / 1e9 : 0,
               (unsigned long long)b->says, (unsigned long long)b->expected,
               (unsigned long long)b->delivered, (unsigned long long)b->errors[ERR_MISSING],
               (unsigned long long)b->dups, (unsigned long long)b->foreign,
               (unsigned long long)b->skipped);
    if (o->mode == MODE_IDLE) {
        long delta = b->rss_after_kb - b->rss_before_kb;
        printf(",\"open\":%u,\"connect_s\":%.3f,\"rss_before_kb\":%ld,\"rss_after_kb\":%ld",
               b->opened, b->t_all_open_ns ? (double)(b->t_all_open_ns - b->t_open_ns) / 1e9 : 0,
               b->rss_before_kb, b->rss_after_kb);
        if (b->rss_before_kb >= 0 && b->rss_after_kb >= 0 && b->opened)
            printf(",\"rss_per_conn_bytes\":%.1f", (double)delta * 1024.0 / (double)b->opened);
        else
            printf(",\"rss_per_conn_bytes\":null");
        if (b->anon_before_kb >= 0 && b->anon_after_kb >= 0 && b->opened)
            printf(",\"anon_per_conn_bytes\":%.1f",
                   (double)(b->anon_after_kb - b->anon_before_kb) * 1024.0 / (double)b->opened);
        else
            printf(",\"anon_per_conn_bytes\":null");
        /* The slope from half to all the connections: what one more connection costs, free of
         * any one-time cost the baseline missed. */
        unsigned added = b->opened - b->opened_mid;
        printf(",\"open_mid\":%u,\"rss_mid_kb\":%ld,\"anon_mid_kb\":%ld", b->opened_mid,
               b->rss_mid_kb, b->anon_mid_kb);
        if (b->rss_mid_kb >= 0 && b->rss_after_kb >= 0 && added)
            printf(",\"rss_slope_bytes\":%.1f",
                   (double)(b->rss_after_kb - b->rss_mid_kb) * 1024.0 / (double)added);
        else
            printf(",\"rss_slope_bytes\":null");
        if (b->anon_mid_kb >= 0 && b->anon_after_kb >= 0 && added)
            printf(",\"anon_slope_bytes\":%.1f",
                   (double)(b->anon_after_kb - b->anon_mid_kb) * 1024.0 / (double)added);
        else
            printf(",\"anon_slope_bytes\":null");
    }
    printf("}\n");
    fflush(stdout);

    fprintf(stderr,
            "wsbench %s c=%u s=%zu d=%u: %.0f msg/s, %.2f MB/s, p50 %.1f us, p99 %.1f us, "
            "errors %llu, client cpu %.0f%%, server cpu %.0f%%\n",
            MODE_NAMES[o->mode], o->conns, o->size, o->depth, rate,
            win_s > 0 ? (double)b->win_bytes / win_s / 1e6 : 0, hist_quantile_us(h, 0.5),
            hist_quantile_us(h, 0.99), (unsigned long long)errs,
            win_s > 0 ? 100.0 * ccpu / win_s : 0,
            win_s > 0 && scpu >= 0 ? 100.0 * scpu / win_s : 0);
}

static void finish(struct bench *b, const char *why)
{
    if (b->finished)
        return;
    b->finished = true;
    b->running = false;
    window_end(b);
    if (b->o.mode == MODE_IDLE && b->o.server_pid > 0) {
        b->rss_after_kb = rss_proc_kb(b->o.server_pid);
        b->anon_after_kb = proc_status_kb(b->o.server_pid, "RssAnon");
    }
    report(b, why);
    ev_break(b->loop, EVBREAK_ALL);
}

/* ---- set-up ---- */

static void usage(FILE *f)
{
    fprintf(
        f, "usage: wsbench MODE -p PORT [options]  MODE: echo | broadcast | idle | connect | chat\n"
           "  -H, --host ADDR        IPv4 address of the server (default 127.0.0.1)\n"
           "  -p, --port N           server port\n"
           "      --path PATH        request path (default /)\n"
           "  -c, --connections N    echo/idle/chat: connections; broadcast: subscribers (plus\n"
           "                         one publisher); connect: concurrent open-upgrade-close\n"
           "                         cycles (default 100)\n"
           "  -s, --size BYTES       payload size (default 32; at least 8, broadcast 24; --json\n"
           "                         160; chat: the size of each \"say\" message, default 128)\n"
           "      --json             a realistic JSON chat message (text) instead of letters\n"
           "      --tls              wss://: TLS (OpenSSL), no certificate check unless --tls-ca\n"
           "      --tls-ca FILE      verify the server's certificate against this CA (PEM)\n"
           "      --deflate          offer permessage-deflate (client_no_context_takeover);\n"
           "                         compress what we send, inflate and check what we get\n"
           "      --rooms N          chat: rooms of examples/chat/chat.lua (default 50); client i\n"
           "                         joins room i %% N\n"
           "      --rate R           chat: messages per second per client (default 1)\n"
           "      --join-window N    chat: joins unanswered at a time (default 16)\n"
           "  -b, --binary           binary messages (default text)\n"
           "  -d, --depth N          echo: messages in flight per connection; broadcast:\n"
           "                         publisher messages in flight (default 1)\n"
           "  -t, --duration S       measuring window in seconds (default 5)\n"
           "  -w, --warmup S         traffic before the window (default 1; idle: settle time)\n"
           "  -n, --messages N       echo: stop after N replies in all (no warm-up)\n"
           "      --server-pid PID   read the server's CPU time (and RSS for idle) from /proc\n"
           "                         (idle: after one connect-upgrade-close warm-up cycle, at\n"
           "                         half the connections and at all; per connection and slope)\n"
           "      --verify full|sample  check every byte of each reply (default) or 128 bytes\n"
           "      --open-rate N      handshakes in progress at most (default 200)\n"
           "      --stall S          give up after S seconds without progress (default 3)\n"
           "      --label TEXT       copied into the JSON\n");
}

static double num_arg(const char *name, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (errno || end == v || *end || d < lo || d > hi) {
        fprintf(stderr, "wsbench: %s: %s is not a number in [%g, %g]\n", name, v, lo, hi);
        exit(2);
    }
    return d;
}

static void parse_args(struct opts *o, int argc, char **argv)
{
    static const struct option longs[] = {
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"path", required_argument, NULL, 'P'},
        {"connections", required_argument, NULL, 'c'},
        {"size", required_argument, NULL, 's'},
        {"binary", no_argument, NULL, 'b'},
        {"depth", required_argument, NULL, 'd'},
        {"duration", required_argument, NULL, 't'},
        {"warmup", required_argument, NULL, 'w'},
        {"messages", required_argument, NULL, 'n'},
        {"server-pid", required_argument, NULL, 'S'},
        {"verify", required_argument, NULL, 'V'},
        {"open-rate", required_argument, NULL, 'O'},
        {"stall", required_argument, NULL, 'T'},
        {"label", required_argument, NULL, 'L'},
        {"json", no_argument, NULL, 'J'},
        {"tls", no_argument, NULL, 'X'},
        {"tls-ca", required_argument, NULL, 'A'},
        {"deflate", no_argument, NULL, 'Z'},
        {"rooms", required_argument, NULL, 'R'},
        {"rate", required_argument, NULL, 'r'},
        {"join-window", required_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {0, 0, 0, 0},
    };
    long port = 0;
    *o = (struct opts){.host = "127.0.0.1",
                       .path = "/",
                       .conns = 100,
                       .depth = 1,
                       .rooms = 50,
                       .join_window = 16,
                       .rate = 1,
                       .open_rate = 200,
                       .size = 32,
                       .verify_full = true,
                       .duration_s = 5,
                       .warmup_s = 1,
                       .stall_s = 3};
    if (argc < 2 || argv[1][0] == '-') {
        usage(argc >= 2 && strcmp(argv[1], "--help") == 0 ? stdout : stderr);
        exit(argc >= 2 && strcmp(argv[1], "--help") == 0 ? 0 : 2);
    }
    size_t m = 0;
    while (m < MODE_COUNT && strcmp(argv[1], MODE_NAMES[m]) != 0)
        m++;
    if (m == MODE_COUNT) {
        fprintf(stderr, "wsbench: unknown mode %s\n", argv[1]);
        exit(2);
    }
    o->mode = (enum mode)m;
    optind = 2;
    bool size_set = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "H:p:c:s:bd:t:w:n:h", longs, NULL)) != -1) {
        switch (ch) {
        case 'H':
            o->host = optarg;
            break;
        case 'p':
            port = (long)num_arg("--port", optarg, 1, 65535);
            break;
        case 'P':
            o->path = optarg;
            break;
        case 'c':
            o->conns = (unsigned)num_arg("--connections", optarg, 1, 1000000);
            break;
        case 's':
            o->size = (size_t)num_arg("--size", optarg, 8, 16 << 20);
            size_set = true;
            break;
        case 'b':
            o->binary = true;
            break;
        case 'd':
            o->depth = (unsigned)num_arg("--depth", optarg, 1, 4096);
            break;
        case 't':
            o->duration_s = num_arg("--duration", optarg, 0.1, 3600);
            break;
        case 'w':
            o->warmup_s = num_arg("--warmup", optarg, 0, 3600);
            break;
        case 'n':
            o->target = (uint64_t)num_arg("--messages", optarg, 1, 1e12);
            break;
        case 'S':
            o->server_pid = (long)num_arg("--server-pid", optarg, 1, 1 << 30);
            break;
        case 'V':
            if (strcmp(optarg, "full") && strcmp(optarg, "sample")) {
                fprintf(stderr, "wsbench: --verify takes full or sample\n");
                exit(2);
            }
            o->verify_full = strcmp(optarg, "full") == 0;
            break;
        case 'O':
            o->open_rate = (unsigned)num_arg("--open-rate", optarg, 1, 100000);
            break;
        case 'T':
            o->stall_s = num_arg("--stall", optarg, 0.1, 3600);
            break;
        case 'L':
            o->label = optarg;
            break;
        case 'J':
            o->json = true;
            break;
        case 'X':
            o->tls = true;
            break;
        case 'A':
            o->tls = true;
            o->tls_ca = optarg;
            break;
        case 'Z':
            o->deflate = true;
            break;
        case 'R':
            o->rooms = (unsigned)num_arg("--rooms", optarg, 1, 999);
            break;
        case 'r':
            o->rate = num_arg("--rate", optarg, 0.01, 10000);
            break;
        case 'j':
            o->join_window = (unsigned)num_arg("--join-window", optarg, 1, 1000000);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            exit(2);
        }
    }
    if (optind != argc || port == 0) {
        fprintf(stderr, "wsbench: %s\n", port == 0 ? "--port is required" : "unexpected argument");
        exit(2);
    }
    if (o->mode == MODE_CHAT && !size_set)
        o->size = 128;
    if (o->mode == MODE_BROADCAST && o->size < 24) {
        fprintf(stderr, "wsbench: broadcast messages carry 24 bytes of sequence and time stamp\n");
        exit(2);
    }
    if ((o->json && o->size < 160) || (o->mode == MODE_CHAT && o->size < 64)) {
        fprintf(stderr, "wsbench: --json wants --size 160 or more, chat 64 or more\n");
        exit(2);
    }
    if (o->mode == MODE_CHAT && (o->binary || o->json)) {
        fprintf(stderr, "wsbench: chat speaks its own JSON: no --binary or --json\n");
        exit(2);
    }
    if (o->json && o->binary) {
        fprintf(stderr, "wsbench: --json messages are text\n");
        exit(2);
    }
    if (o->mode == MODE_CHAT && o->conns > 99999) {
        fprintf(stderr, "wsbench: chat numbers its clients with 5 hex digits: at most 99999\n");
        exit(2);
    }
    o->addr.sin_family = AF_INET;
    o->addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, o->host, &o->addr.sin_addr) != 1) {
        fprintf(stderr, "wsbench: --host wants an IPv4 address, not %s\n", o->host);
        exit(2);
    }
}

/* RFC 6455 §4.2.2: accept = base64(SHA-1(key + GUID)). */
static void compute_accept(char out[32])
{
    char in[128];
    unsigned char digest[SHA_DIGEST_LENGTH];
    int n = snprintf(in, sizeof in, "%s%s", KEY, GUID);
    SHA1((const unsigned char *)in, (size_t)n, digest);
    EVP_EncodeBlock((unsigned char *)out, digest, SHA_DIGEST_LENGTH);
}

static void raise_nofile(unsigned need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)need + 16)
        fprintf(stderr, "wsbench: warning: RLIMIT_NOFILE is %llu, %u connections need more\n",
                (unsigned long long)rl.rlim_cur, need);
}

static void *xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "wsbench: out of memory\n");
        exit(1);
    }
    return p;
}

/* Text for --json and chat messages: ordinary chat prose, no quotes, backslashes or slashes
 * (nothing a JSON encoder escapes), distinct sentences so that 1 KiB does not repeat itself. */
static const char CHAT_TEXT[] =
    "Morning all, quick update on the release: the build went green around midnight and the "
    "staging deploy finished without complaints. Could someone from the mobile team check "
    "whether the login screen still flickers on older Android phones? I saw it twice on a "
    "Pixel 3 yesterday, but never on anything newer. Also, the meeting moved to Thursday at "
    "half past two because half of the design people are travelling on Wednesday. If you have "
    "questions about the new pricing page, Maria wrote a short summary in the wiki, with "
    "screenshots of both variants and the numbers from last week. Remember that the coffee "
    "machine on the fourth floor is broken again; the one near the lifts works fine. Thanks to "
    "everyone who stayed late on Friday to fix the payment webhook, that was a nasty one and "
    "customers noticed nothing. Next on my list: cleaning up old feature flags, upgrading the "
    "database driver, and writing the postmortem for the outage in October. Ping me here if "
    "anything blocks you, or just grab me after lunch. Happy to pair on the search indexing "
    "work too, it looks like the queue backs up whenever the nightly import runs late. ";

/* Fills DST[0..n) with the text, starting at OFF in it, wrapping around. */
static void text_fill(uint8_t *dst, size_t n, size_t off)
{
    size_t len = sizeof CHAT_TEXT - 1;
    for (size_t i = 0; i < n; i++)
        dst[i] = (uint8_t)CHAT_TEXT[(off + i) % len];
}

/* b->payload and its span; then the wire form of the rest: masked, and compressed first with
 * --deflate (a fresh raw deflater, level 6 like browsers, the sync-flush tail stripped: RFC
 * 7692 §7.2.1). The span goes uncompressed in a stored block of its own, so each message costs
 * one header and no compression at run time; the server inflates both blocks. */
static void build_templates(struct bench *b)
{
    const struct opts *o = &b->o;
    size_t size = o->size;
    uint8_t *p = b->payload = xcalloc(size, 1);
    b->ts_off = b->from_off = -1;
    if (o->mode == MODE_CHAT) {
        /* examples/chat: {"type":"say","text":"FFFFF SSSSSSSS TTTTTTTTTTTTTTTT ..."} */
        static const char head[] = "{\"type\":\"say\",\"text\":\"00000 00000000 0000000000000000 ";
        b->span = sizeof head - 1;
        b->from_off = 22;
        b->seq_off = 28;
        b->ts_off = 37;
        memcpy(p, head, b->span);
        text_fill(p + b->span, size - b->span - 2, 0);
        memcpy(p + size - 2, "\"}", 2);
    } else if (o->json) {
        /* the message of the examples/chat protocol, plus our sequence number (and time) */
        const char *head = o->mode == MODE_BROADCAST
                               ? "{\"seq\":\"00000000\",\"ts\":\"0000000000000000\","
                               : "{\"seq\":\"00000000\",";
        static const char mid[] = "\"type\":\"message\",\"room\":\"lobby\",\"id\":48213,"
                                  "\"nick\":\"margaret.h\",\"ts_ms\":1764000000000,\"text\":\"";
        b->span = strlen(head);
        b->seq_off = 8;
        if (o->mode == MODE_BROADCAST)
            b->ts_off = 24;
        memcpy(p, head, b->span);
        memcpy(p + b->span, mid, sizeof mid - 1);
        size_t at = b->span + sizeof mid - 1;
        text_fill(p + at, size - at - 2, 0);
        memcpy(p + size - 2, "\"}", 2);
    } else {
        /* printable ASCII (valid UTF-8 for text messages) that changes along the payload, so
         * a misplaced or repeated chunk does not compare equal */
        for (size_t i = 0; i < size; i++)
            p[i] = (uint8_t)('a' + (i * 7 + (i >> 6)) % 26);
        b->span = o->mode == MODE_BROADCAST ? 24 : 8;
        b->seq_off = 0;
        if (o->mode == MODE_BROADCAST)
            b->ts_off = 8;
    }
    const uint8_t *rest = p + b->span;
    size_t rest_len = size - b->span;
    uint8_t *comp = NULL;
    b->wire_pre_len = b->span;
    if (o->deflate) {
        z_stream z = {0};
        if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) !=
            Z_OK) {
            fprintf(stderr, "wsbench: deflateInit2 failed\n");
            exit(1);
        }
        size_t cap = deflateBound(&z, rest_len) + 64;
        comp = xcalloc(cap, 1);
        z.next_in = (Bytef *)(uintptr_t)rest;
        z.avail_in = (uInt)rest_len;
        z.next_out = comp;
        z.avail_out = (uInt)cap;
        int rc = deflate(&z, Z_SYNC_FLUSH);
        size_t clen = cap - z.avail_out;
        if (rc != Z_OK || z.avail_in != 0 || clen < 4 ||
            memcmp(comp + clen - 4, "\x00\x00\xff\xff", 4) != 0) {
            fprintf(stderr, "wsbench: compressing the template failed\n");
            exit(1);
        }
        deflateEnd(&z);
        rest = comp;
        rest_len = clen - 4;
        b->wire_pre_len = WB_STORED_HEAD + b->span;
        b->zout = xcalloc(WB_ZOUT_BYTES, 1);
    }
    b->wire_tail_len = rest_len;
    b->wire_len = b->wire_pre_len + rest_len;
    b->wire_tail = xcalloc(rest_len, 1);
    mask_copy(b->wire_tail, rest, rest_len, b->wire_pre_len);
    free(comp);
    b->head_len = frame_head(b->head, b->opcode, b->wire_len);
    if (o->deflate)
        b->head[0] |= 0x40; /* RSV1: RFC 7692 §6 */
}

static SSL_CTX *tls_context(const struct opts *o)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        fprintf(stderr, "wsbench: %s\n", tls_error("SSL_CTX_new failed"));
        exit(1);
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    /* retries may come from a moved buffer; partial writes are fine; read whole records ahead */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    /* a TCP FIN without close_notify is an end, not an error (the server may close first) */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* every connection makes a full handshake: connect mode measures those, not resumptions */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (o->tls_ca) {
        if (SSL_CTX_load_verify_locations(ctx, o->tls_ca, NULL) != 1) {
            fprintf(stderr, "wsbench: %s: %s\n", o->tls_ca, tls_error("cannot load the CA"));
            exit(2);
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    return ctx;
}

int main(int argc, char **argv)
{
    static struct bench bench;
    struct bench *b = &bench;
    parse_args(&b->o, argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile(b->o.conns + 1);

    b->loop = ev_default_loop(EVFLAG_AUTO);
    b->rbuf = xcalloc(WB_RBUF_BYTES, 1);
    compute_accept(b->accept);
    char host[80];
    snprintf(host, sizeof host, "%s:%u", b->o.host, ntohs(b->o.addr.sin_port));
    /* RFC 7692 §7.1: we compress every message on its own (client_no_context_takeover), and
     * any window the server asks of us is fine up to our message size */
    int n = snprintf(b->request, sizeof b->request,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n",
                     b->o.path, host, KEY,
                     b->o.deflate ? "Sec-WebSocket-Extensions: permessage-deflate; "
                                    "client_no_context_takeover; client_max_window_bits\r\n"
                                  : "");
    if (n < 0 || (size_t)n >= sizeof b->request || (size_t)n > WB_RAW_BYTES) {
        fprintf(stderr, "wsbench: --path too long\n");
        return 2;
    }
    b->request_len = (size_t)n;

    b->opcode = b->o.binary ? 0x2 : 0x1;
    build_templates(b);
    if (b->o.tls)
        b->ssl_ctx = tls_context(&b->o);
    if (b->o.mode == MODE_CHAT) {
        b->room_size = xcalloc(b->o.rooms, sizeof *b->room_size);
        for (unsigned i = 0; i < b->o.conns; i++)
            b->room_size[i % b->o.rooms]++;
    }

    b->nconns = b->o.conns + (b->o.mode == MODE_BROADCAST ? 1 : 0);
    /* idle: one more, the warm-up cycle, outside the nconns counted */
    unsigned nalloc = b->nconns + (b->o.mode == MODE_IDLE ? 1 : 0);
    b->conns = xcalloc(nalloc, sizeof *b->conns);
    for (unsigned i = 0; i < nalloc; i++) {
        struct conn *c = &b->conns[i];
        c->b = b;
        c->fd = -1;
        c->hs = xcalloc(WB_HS_BYTES, 1);
        c->last_seq = UINT32_MAX;
        switch (b->o.mode) {
        case MODE_ECHO:
            c->role = ROLE_ECHO;
            c->q_cap = b->o.depth;
            c->sent_ns = xcalloc(b->o.depth, sizeof *c->sent_ns);
            break;
        case MODE_BROADCAST:
            c->role = i == b->o.conns ? ROLE_PUB : ROLE_SUB;
            c->q_cap = c->role == ROLE_PUB ? b->o.depth : 1;
            break;
        case MODE_IDLE:
            c->role = i == b->nconns ? ROLE_CYCLE : ROLE_IDLE;
            c->q_cap = 1;
            break;
        case MODE_CONNECT:
            c->role = ROLE_CYCLE;
            c->q_cap = 1;
            break;
        case MODE_CHAT:
        case MODE_COUNT:
            c->role = ROLE_CHAT;
            c->q_cap = 64;
            c->room = i % b->o.rooms;
            c->slot = i / b->o.rooms;
            c->recv_next = xcalloc(b->room_size[c->room], sizeof *c->recv_next);
            c->msg = xcalloc(WB_CHAT_CAP, 1);
            break;
        }
        c->q = xcalloc(c->q_cap, sizeof *c->q);
    }
    if (b->o.mode == MODE_BROADCAST) {
        b->pub = &b->conns[b->o.conns];
        b->acks = xcalloc(b->o.depth, sizeof *b->acks);
        b->pub_ns = xcalloc(b->o.depth, sizeof *b->pub_ns);
    }
    if (b->o.server_pid > 0) {
        b->rss_before_kb = rss_proc_kb(b->o.server_pid);
        b->anon_before_kb = proc_status_kb(b->o.server_pid, "RssAnon");
        b->rss_mid_kb = b->anon_mid_kb = -1;
        if (cpu_proc_s(b->o.server_pid) < 0) {
            fprintf(stderr, "wsbench: no process %ld to measure\n", b->o.server_pid);
            return 2;
        }
    } else {
        b->rss_before_kb = b->rss_mid_kb = b->rss_after_kb = -1;
        b->anon_before_kb = b->anon_mid_kb = b->anon_after_kb = -1;
    }

    ev_prepare_init(&b->prepare, on_prepare);
    b->prepare.data = b;
    ev_prepare_start(b->loop, &b->prepare);
    ev_timer_init(&b->watchdog, on_watchdog, 0.25, 0.25);
    b->watchdog.data = b;
    ev_timer_start(b->loop, &b->watchdog);
    b->last_progress_ns = now_ns();

    if (b->o.mode == MODE_CONNECT) {
        run_start(b);
        for (unsigned i = 0; i < b->nconns; i++)
            conn_start(b, &b->conns[b->next_open++]);
    } else if (b->o.mode == MODE_IDLE) {
        b->warm = &b->conns[b->nconns];
        b->warming = true;
        conn_start(b, b->warm);
    } else {
        b->t_open_ns = now_ns();
        open_more(b);
    }
    ev_run(b->loop, 0);

    uint64_t errs = 0;
    for (int i = 0; i < ERR_COUNT; i++)
        errs += b->errors[i];
    return errs ? 1 : 0;
}
