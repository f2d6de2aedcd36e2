/* wsbench: a one-thread WebSocket load generator on libev for wsserver's benchmarks. Modes echo,
 * broadcast, idle, connect and chat; every reply is checked; one JSON object per run on stdout.
 * It is a measuring tool, not a conformance client: it speaks only what the scenarios need
 * (masked client frames with a fixed key, unfragmented data messages out, pong, close), over
 * TCP or TLS (--tls), with or without permessage-deflate (--deflate, RFC 7692). This file sets
 * a run up (the request, the templates, each connection's role) and runs the loop. */
#include "wsbench.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

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

void *wb_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) {
        fprintf(stderr, "wsbench: out of memory\n");
        exit(1);
    }
    return p;
}

int main(int argc, char **argv)
{
    static struct bench bench;
    struct bench *b = &bench;
    wb_parse_args(&b->o, argc, argv);
    signal(SIGPIPE, SIG_IGN);
    raise_nofile(b->o.conns + 1);

    b->loop = ev_default_loop(EVFLAG_AUTO);
    b->rbuf = wb_xcalloc(WB_RBUF_BYTES, 1);
    wb_compute_accept(b->accept);
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
    wb_build_templates(b);
    if (b->o.tls)
        b->ssl_ctx = wb_tls_context(&b->o);
    if (b->o.mode == MODE_CHAT) {
        b->room_size = wb_xcalloc(b->o.rooms, sizeof *b->room_size);
        for (unsigned i = 0; i < b->o.conns; i++)
            b->room_size[i % b->o.rooms]++;
    }

    b->nconns = b->o.conns + (b->o.mode == MODE_BROADCAST ? 1 : 0);
    /* idle: one more, the warm-up cycle, outside the nconns counted */
    unsigned nalloc = b->nconns + (b->o.mode == MODE_IDLE ? 1 : 0);
    b->conns = wb_xcalloc(nalloc, sizeof *b->conns);
    for (unsigned i = 0; i < nalloc; i++) {
        struct conn *c = &b->conns[i];
        c->b = b;
        c->fd = -1;
        c->hs = wb_xcalloc(WB_HS_BYTES, 1);
        c->last_seq = UINT32_MAX;
        switch (b->o.mode) {
        case MODE_ECHO:
            c->role = ROLE_ECHO;
            c->q_cap = b->o.depth;
            c->sent_ns = wb_xcalloc(b->o.depth, sizeof *c->sent_ns);
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
            c->recv_next = wb_xcalloc(b->room_size[c->room], sizeof *c->recv_next);
            c->msg = wb_xcalloc(WB_CHAT_CAP, 1);
            break;
        }
        c->q = wb_xcalloc(c->q_cap, sizeof *c->q);
    }
    if (b->o.mode == MODE_BROADCAST) {
        b->pub = &b->conns[b->o.conns];
        b->acks = wb_xcalloc(b->o.depth, sizeof *b->acks);
        b->pub_ns = wb_xcalloc(b->o.depth, sizeof *b->pub_ns);
    }
    if (b->o.server_pid > 0) {
        b->rss_before_kb = wb_rss_proc_kb(b->o.server_pid);
        b->anon_before_kb = wb_proc_status_kb(b->o.server_pid, "RssAnon");
        b->rss_mid_kb = b->anon_mid_kb = -1;
        if (wb_cpu_proc_s(b->o.server_pid, NULL) < 0) {
            fprintf(stderr, "wsbench: no process %ld to measure\n", b->o.server_pid);
            return 2;
        }
    } else {
        b->rss_before_kb = b->rss_mid_kb = b->rss_after_kb = -1;
        b->anon_before_kb = b->anon_mid_kb = b->anon_after_kb = -1;
    }

    ev_prepare_init(&b->prepare, wb_on_prepare);
    b->prepare.data = b;
    ev_prepare_start(b->loop, &b->prepare);
    ev_timer_init(&b->watchdog, wb_on_watchdog, 0.25, 0.25);
    b->watchdog.data = b;
    ev_timer_start(b->loop, &b->watchdog);
    b->last_progress_ns = wb_now_ns();

    if (b->o.mode == MODE_CONNECT) {
        wb_run_start(b);
        for (unsigned i = 0; i < b->nconns; i++)
            wb_conn_start(b, &b->conns[b->next_open++]);
    } else if (b->o.mode == MODE_IDLE) {
        b->warm = &b->conns[b->nconns];
        b->warming = true;
        wb_conn_start(b, b->warm);
    } else {
        b->t_open_ns = wb_now_ns();
        wb_open_more(b);
    }
    ev_run(b->loop, 0);

    uint64_t errs = 0;
    for (int i = 0; i < ERR_COUNT; i++)
        errs += b->errors[i];
    return errs ? 1 : 0;
}
