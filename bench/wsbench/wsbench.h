/* wsbench's own declarations, shared by its files only: the limits, the state of a run and of
 * each connection, and what each file offers the others (grouped by file). Nothing here is a
 * contract of the server's. */
#ifndef WSBENCH_H
#define WSBENCH_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include <ev.h>
#include <openssl/ssl.h>
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

/* RFC 6455 §4.1: the request's Sec-WebSocket-Key (handshake.c) */
extern const char KEY[];

enum mode { MODE_ECHO, MODE_BROADCAST, MODE_IDLE, MODE_CONNECT, MODE_CHAT, MODE_COUNT };
extern const char *const MODE_NAMES[]; /* by enum mode (options.c) */

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
extern const char *const ERR_NAMES[]; /* by enum wb_err (conn.c) */

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
    double user_server0, user_server1; /* the utime part of cpu_server0/1 */
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

/* One member wb_json_fields looks for (json.c). */
struct jfield {
    const char *key;
    const uint8_t *v; /* a string's raw bytes (escapes as sent), or a scalar's text */
    size_t len;
    bool found;
};

/* ---- main.c ---- */

/* calloc that exits with a message when memory runs out (a zero size counts as one). */
void *wb_xcalloc(size_t n, size_t size);

/* ---- options.c ---- */

/* Fills O from the command line; prints usage or what is wrong and exits (0 for --help, 2
 * otherwise) when the arguments do not make a run. */
void wb_parse_args(struct opts *o, int argc, char **argv);

/* ---- proc.c ---- */

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t wb_now_ns(void);

/* CPU seconds this process used so far. */
double wb_cpu_self_s(void);

/* utime + stime of every thread of PID (proc(5): fields 14 and 15, in clock ticks), in seconds;
 * -1 if gone. *user (when not NULL) gets the utime part. */
double wb_cpu_proc_s(long pid, double *user);

/* Busy CPU seconds of the whole machine, all CPUs (proc(5) /proc/stat: all but idle and iowait):
 * the share of neither wsbench nor the server tells how noisy the machine was. */
double wb_cpu_machine_s(void);

/* A field of /proc/PID/status in kB (VmRSS, RssAnon), -1 when unreadable. */
long wb_proc_status_kb(long pid, const char *field);

/* VmRSS of PID in KiB (proc(5)); -1 if unknown. */
long wb_rss_proc_kb(long pid);

/* ---- hist.c ---- */

/* Records one sample of NS nanoseconds. */
void wb_hist_add(struct hist *h, uint64_t ns);

/* The value at quantile q, in microseconds; 0 when empty. */
double wb_hist_quantile_us(const struct hist *h, double q);

/* ---- template.c ---- */

/* Parses DIGITS lowercase hex digits; false on any other byte. */
bool wb_hex_get(const uint8_t *src, unsigned digits, uint64_t *out);

/* RFC 6455 §5.2 client frame header: FIN, opcode, MASK bit, 7/16/64-bit length, masking key. */
size_t wb_frame_head(uint8_t *h, uint8_t opcode, uint64_t len);

/* RFC 6455 §5.3: payload byte i is XORed with key byte i mod 4; OFF is the payload offset. */
void wb_mask_copy(uint8_t *dst, const uint8_t *src, size_t len, size_t off);

/* The first b->span bytes of message SEQ (timestamp TS, sender FROM where the template has
 * them) into DST. */
void wb_span_put(const struct bench *b, uint8_t *dst, uint64_t seq, uint64_t ts, uint64_t from);

/* The sequence number (and timestamp) in a received span, whose other bytes must be the
 * template's. */
bool wb_span_get(const struct bench *b, const uint8_t *got, uint64_t *seq, uint64_t *ts);

/* b->payload and its span; then the wire form of the rest: masked, and compressed first with
 * --deflate (a fresh raw deflater, level 6 like browsers, the sync-flush tail stripped: RFC
 * 7692 §7.2.1). The span goes uncompressed in a stored block of its own, so each message costs
 * one header and no compression at run time; the server inflates both blocks. */
void wb_build_templates(struct bench *b);

/* ---- output.c ---- */

/* Watches C's socket for EVENTS (EV_READ, EV_WRITE) from now on. */
void wb_io_want(struct conn *c, int events);

/* Appends bytes to C's raw buffer; false when they do not fit. */
bool wb_raw_append(struct conn *c, const void *data, size_t len);

/* A masked control or short data frame into the raw buffer. */
bool wb_raw_frame(struct conn *c, uint8_t opcode, const uint8_t *payload, size_t len);

/* What is queued, as iovecs: the raw buffer (only between messages), then messages. Sets
 * *raw_now to the raw bytes included. */
int wb_build_iov(struct conn *c, struct iovec *iov, size_t *raw_now);

/* W bytes of what wb_build_iov offered are gone (written, or taken for SSL_write). */
void wb_advance(struct conn *c, size_t raw_now, size_t w);

/* Whether anything is waiting to be written on C. */
bool wb_has_output(const struct conn *c);

/* Writes what is queued, with one sendmsg per batch (SSL_write per record with --tls). Returns
 * -1 when the connection died. */
int wb_flush(struct conn *c);

/* Queues one data message: its header, then (with --deflate, RFC 7692 §7.2.1 and RFC 1951
 * §3.2.4: a non-final stored block) its span, masked; the tail is shared. */
void wb_enqueue(struct conn *c, uint64_t seq, uint64_t ts);

/* ---- tls.c ---- */

/* The OpenSSL error queue as one line (and emptied), or WHAT when it is empty. */
const char *wb_tls_error(const char *what);

/* --tls: bytes move from the queue to c->tout (at most one record), then SSL_write sends them.
 * A write that wants to be retried is retried with the same bytes and length (SSL_write(3)),
 * so nothing queued later (a pong, a close) can slip in front of them. */
int wb_flush_tls(struct conn *c);

/* --tls: one step of the client handshake (non-blocking; libev says when to go on). Then the
 * HTTP upgrade request goes out. Returns -1 when the connection is gone. */
int wb_tls_step(struct conn *c);

/* The run's client context: TLS 1.2 or newer, no session cache (every connection makes a full
 * handshake), the certificate checked against --tls-ca when given. Exits when it cannot be
 * made (1) or the CA cannot be loaded (2). */
SSL_CTX *wb_tls_context(const struct opts *o);

/* ---- parser.c ---- */

/* P ready for the first byte of a frame. */
void wb_parser_reset(struct parser *p);

/* Message bytes (inflated when compressed) in order: kept at the start, checked, counted. */
int wb_consume(struct conn *c, const uint8_t *data, size_t n);

/* Feeds received bytes through the frame decoder. Returns -1 when the connection is gone. */
int wb_parse(struct conn *c, const uint8_t *data, size_t len, uint64_t t);

/* ---- deflate.c ---- */

/* RFC 7692 §7.1: the server's answer to our offer. Returns NULL when it is acceptable (and
 * records it), or what is wrong. */
const char *wb_extensions_ok(struct conn *c, const char *head, size_t len);

/* RFC 7692 §7.2.2: compressed payload bytes through the connection's inflater (raw DEFLATE,
 * window 15: any window the server uses fits). */
int wb_inflate_some(struct conn *c, const uint8_t *in, size_t n);

/* A 64-bit hash of the compressed bytes (FNV-1a over 8-byte words, then the rest). */
uint64_t wb_memo_hash(const uint8_t *d, size_t n);

/* Compressed payload bytes: kept for the memo while the message is small (and the inflater
 * starts afresh for each message), inflated as they come otherwise. */
int wb_compressed_in(struct conn *c, const uint8_t *data, size_t n);

/* ---- handshake.c ---- */

/* The value of header NAME (lowercase, with the colon) in the head, trimmed; names are
 * case-insensitive. NULL when absent. */
const char *wb_header_value(const char *head, size_t len, const char *name, size_t *vlen);

/* Bytes read while waiting for the 101. Returns -1 when the connection is gone. */
int wb_handshake_input(struct conn *c, const uint8_t *data, size_t len, uint64_t t);

/* RFC 6455 §4.2.2: accept = base64(SHA-1(key + GUID)). */
void wb_compute_accept(char out[32]);

/* ---- conn.c ---- */

/* Counts one error of kind E; the first five of each kind are printed on stderr with WHAT
 * (C may be NULL: no connection). */
void wb_err_add(struct bench *b, enum wb_err e, struct conn *c, const char *what);

/* Closes C and forgets its state and queues; a subscriber's departure may let the publisher go
 * on. Restarts nothing. */
void wb_conn_kill(struct conn *c);

/* Counts error E (WHAT) and kills C; a connect-mode cycle is started again while the run goes
 * on. */
void wb_conn_fail(struct conn *c, enum wb_err e, const char *what);

/* Starts (or restarts, in connect mode) connection C: non-blocking connect, request queued. */
void wb_conn_start(struct bench *b, struct conn *c);

/* ---- run.c ---- */

/* Something happened at T: the watchdog's stall clock starts again. */
void wb_progress(struct bench *b, uint64_t t);

/* Ends the measuring window (once): its end time and CPU readings. */
void wb_window_end(struct bench *b);

/* Every connection is ready: start the traffic, then the warm-up, then the window. */
void wb_run_start(struct bench *b);

/* Opens connections, at most --open-rate handshakes at a time. Idle mode opens half of them,
 * samples the server's memory, then opens the rest. */
void wb_open_more(struct bench *b);

/* Idle mode's warm-up cycle is over: what the first handshake pages in (libcrypto's code and
 * tables, the first chunks of each size) is in the baseline, not counted per connection. */
void wb_warm_done(struct bench *b);

/* libev prepare: writes the publisher's messages queued during this loop pass in one go. */
void wb_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents);

/* libev timer (every 0.25 s): fails connections that stopped answering, ends the run after
 * --stall seconds without progress. */
void wb_on_watchdog(struct ev_loop *loop, ev_timer *w, int revents);

/* Ends the run (once) for reason WHY: closes the window, samples the server's memory in idle
 * mode, prints the report and breaks the loop. */
void wb_finish(struct bench *b, const char *why);

/* ---- report.c ---- */

/* Prints the run's JSON object on stdout and the summary line on stderr; WHY is the "end". */
void wb_report(struct bench *b, const char *why);

/* ---- echo.c ---- */

/* Queues C's next echo request, sent at T. */
void wb_echo_send(struct conn *c, uint64_t t);

/* A whole data message on an echo connection, received at T: checked, timed, answered with
 * the next request. */
void wb_on_echo_reply(struct conn *c, uint64_t t);

/* ---- broadcast.c ---- */

/* Publishes while fewer than --depth messages are not yet delivered to every live subscriber. */
void wb_pub_send_more(struct bench *b);

/* A whole data message on a subscriber, received at T: the "ok" to "sub", then deliveries
 * checked for content and order, timed from their publish time, acknowledged. */
void wb_on_delivery(struct conn *c, uint64_t t);

/* ---- chat.c ---- */

/* Every tick sends what the schedule owes: clients take turns in a fixed order, so each sends
 * every 1/rate s and the room traffic is spread evenly. A client whose queue is full (the
 * server does not read) skips its turn; skips are counted. */
void wb_on_chat_tick(struct ev_loop *loop, ev_timer *w, int revents);

/* The window is over: stop sending, wait until every message reached every member. */
void wb_chat_drain(struct bench *b);

/* Clients join in connection order, at most --join-window joins unanswered at a time: each join
 * makes examples/chat broadcast the room list to every connection. */
void wb_chat_join_more(struct bench *b);

/* One message of the examples/chat protocol. "message" deliveries are checked: from a member of
 * this room (room, nick and the sender index in the text agree), each member's messages in
 * order, each exactly once. */
void wb_on_chat_message(struct conn *c, uint64_t t);

/* ---- json.c ---- */

/* Finds the members of the top-level object in s[0..n) named by F (RFC 8259; values are not
 * unescaped or validated further). Returns false when the text ends early or is not an object:
 * the fields found up to there stay found. */
bool wb_json_fields(const uint8_t *s, size_t n, struct jfield *f, int nf);

/* Whether F was found and its value is exactly LIT. */
bool wb_jeq(const struct jfield *f, const char *lit);

#endif
