/* The phases of a run: the traffic started, the warm-up, the measuring window and its end;
 * connections opened at --open-rate (idle mode: in two halves, the server's memory sampled), the
 * watchdog for stalls, and the end that prints the report. */
#include "wsbench.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

void wb_progress(struct bench *b, uint64_t t)
{
    b->last_progress_ns = t;
}

/* Idle mode keeps the handshake latencies of the opening phase; the other modes start afresh. */
static void window_begin(struct bench *b)
{
    if (b->o.mode != MODE_IDLE)
        memset(&b->hist, 0, sizeof b->hist);
    b->win_msgs = b->win_bytes = b->win_publishes = b->win_in = b->win_out = b->win_says = 0;
    b->measuring = b->measured = true;
    b->t_win_ns = wb_now_ns();
    b->cpu_client0 = wb_cpu_self_s();
    b->cpu_server0 = b->o.server_pid > 0 ? wb_cpu_proc_s(b->o.server_pid, &b->user_server0) : -1;
    b->cpu_machine0 = wb_cpu_machine_s();
}

void wb_window_end(struct bench *b)
{
    if (!b->measuring)
        return;
    b->measuring = false;
    b->t_end_ns = wb_now_ns();
    b->cpu_client1 = wb_cpu_self_s();
    b->cpu_server1 = b->o.server_pid > 0 ? wb_cpu_proc_s(b->o.server_pid, &b->user_server1) : -1;
    b->cpu_machine1 = wb_cpu_machine_s();
}

static void on_end(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct bench *b = w->data;
    (void)loop;
    (void)revents;
    if (b->o.mode == MODE_CHAT)
        wb_chat_drain(b);
    else
        wb_finish(b, "duration");
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

void wb_run_start(struct bench *b)
{
    uint64_t t = wb_now_ns();
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
                    wb_echo_send(c, t);
            wb_flush(c);
        }
    } else if (b->o.mode == MODE_BROADCAST) {
        wb_pub_send_more(b);
    } else if (b->o.mode == MODE_CHAT) {
        b->t_ready_ns = b->t_send0_ns = t;
        ev_timer_init(&b->chat_tick, wb_on_chat_tick, 0.002, 0.002);
        b->chat_tick.data = b;
        ev_timer_start(b->loop, &b->chat_tick);
    }
    if (b->o.target)
        return;
    ev_timer_init(&b->warmup_timer, on_warmup, b->o.warmup_s, 0.);
    b->warmup_timer.data = b;
    ev_timer_start(b->loop, &b->warmup_timer);
}

void wb_open_more(struct bench *b)
{
    if (b->warming)
        return;
    unsigned upto = b->o.mode == MODE_IDLE && !b->mid_taken ? b->nconns / 2 : b->nconns;
    while (b->next_open < upto && b->opening < b->o.open_rate && !b->finished)
        wb_conn_start(b, &b->conns[b->next_open++]);
    if (upto < b->nconns && b->next_open == upto && b->opening == 0 && !b->finished) {
        b->mid_taken = true;
        b->opened_mid = b->opened;
        if (b->o.server_pid > 0) {
            b->rss_mid_kb = wb_rss_proc_kb(b->o.server_pid);
            b->anon_mid_kb = wb_proc_status_kb(b->o.server_pid, "RssAnon");
        }
        wb_open_more(b);
        return;
    }
    if (b->o.mode == MODE_IDLE && !b->running && b->next_open == b->nconns && b->opening == 0) {
        b->t_all_open_ns = wb_now_ns();
        wb_run_start(b);
    }
    if (b->o.mode == MODE_ECHO && !b->running && b->next_open == b->nconns && b->opening == 0)
        wb_run_start(b);
}

void wb_warm_done(struct bench *b)
{
    b->warming = false;
    b->opened = 0;
    if (b->o.server_pid > 0) {
        usleep(50000); /* the server frees the closed connection on its next loop pass */
        b->rss_before_kb = wb_rss_proc_kb(b->o.server_pid);
        b->anon_before_kb = wb_proc_status_kb(b->o.server_pid, "RssAnon");
    }
    b->t_open_ns = wb_now_ns();
    wb_open_more(b);
}

void wb_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
    struct bench *b = w->data;
    (void)loop;
    (void)revents;
    if (b->pub_dirty && b->pub && b->pub->state == CS_OPEN) {
        b->pub_dirty = false;
        wb_flush(b->pub);
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
            wb_conn_fail(c, ERR_STALL, what);
    }
}

void wb_on_watchdog(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct bench *b = w->data;
    (void)loop;
    (void)revents;
    uint64_t t = wb_now_ns();
    check_late(b, t);
    if ((double)(t - b->last_progress_ns) / 1e9 > b->o.stall_s) {
        char what[96];
        snprintf(what, sizeof what, "no progress for %.1f s (%u of %u connections open)",
                 (double)(t - b->last_progress_ns) / 1e9, b->opened, b->nconns);
        wb_err_add(b, ERR_STALL, NULL, what);
        wb_finish(b, "stall");
    }
}

void wb_finish(struct bench *b, const char *why)
{
    if (b->finished)
        return;
    b->finished = true;
    b->running = false;
    wb_window_end(b);
    if (b->o.mode == MODE_IDLE && b->o.server_pid > 0) {
        b->rss_after_kb = wb_rss_proc_kb(b->o.server_pid);
        b->anon_after_kb = wb_proc_status_kb(b->o.server_pid, "RssAnon");
    }
    wb_report(b, why);
    ev_break(b->loop, EVBREAK_ALL);
}
