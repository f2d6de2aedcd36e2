/* Chat mode against examples/chat: joins in a window, messages on a schedule spread over the
 * clients, every delivery checked (room, nick, each member's order, exactly once), and the drain
 * that waits for what is still owed. */
#include "wsbench.h"

#include <stdio.h>
#include <string.h>

static void chat_send(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    wb_enqueue(c, c->send_seq, t);
    c->send_seq++;
    b->says++;
    if (b->measuring)
        b->win_says++;
    b->expected += b->room_size[c->room]; /* the sender gets its own message too */
}

void wb_on_chat_tick(struct ev_loop *loop, ev_timer *w, int revents)
{
    struct bench *b = w->data;
    (void)loop;
    (void)revents;
    if (!b->running || b->draining || b->finished)
        return;
    uint64_t t = wb_now_ns();
    uint64_t due = (uint64_t)((double)(t - b->t_send0_ns) / 1e9 * b->o.rate * b->nconns);
    while (b->chat_next < due) {
        struct conn *c = &b->conns[b->chat_next++ % b->nconns];
        if (c->state == CS_OPEN && c->joined && c->q_len < c->q_cap) {
            chat_send(c, t);
            wb_flush(c);
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
    wb_finish(b, "duration");
}

void wb_chat_drain(struct bench *b)
{
    wb_window_end(b);
    b->draining = true;
    ev_timer_stop(b->loop, &b->chat_tick);
    if (b->delivered + b->gaps >= b->expected) {
        wb_finish(b, "duration");
        return;
    }
    ev_timer_init(&b->drain_timer, on_drain_timeout, b->o.stall_s, 0.);
    b->drain_timer.data = b;
    ev_timer_start(b->loop, &b->drain_timer);
}

static int room_name(char *dst, size_t cap, uint32_t room)
{
    return snprintf(dst, cap, "bench-%03u", room);
}

static int nick_name(char *dst, size_t cap, uint32_t idx)
{
    return snprintf(dst, cap, "u%05u", idx);
}

void wb_chat_join_more(struct bench *b)
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
        wb_raw_frame(c, 0x1, (const uint8_t *)join, (size_t)n);
        c->join_sent = true;
        b->join_next++;
        b->join_inflight++;
        wb_flush(c);
    }
}

void wb_on_chat_message(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    size_t n = p->msg_off < WB_CHAT_CAP ? (size_t)p->msg_off : WB_CHAT_CAP;
    struct jfield f[] = {{"type", NULL, 0, false},
                         {"room", NULL, 0, false},
                         {"nick", NULL, 0, false},
                         {"text", NULL, 0, false},
                         {"code", NULL, 0, false}};
    bool whole = wb_json_fields(c->msg, n, f, 5);
    wb_progress(b, t);
    if (p->msg_opcode != 0x1 || (!whole && p->msg_off <= WB_CHAT_CAP)) {
        wb_err_add(b, ERR_MISMATCH, c, "chat: not a JSON object in a text message");
        return;
    }
    if (!f[0].found) {
        if (p->msg_off <= WB_CHAT_CAP)
            wb_err_add(b, ERR_MISMATCH, c, "chat: message without a type");
        return; /* a long room list or history whose type lies beyond what we keep */
    }
    if (wb_jeq(&f[0], "joined")) {
        if (!c->joined && c->join_sent) {
            c->joined = true;
            b->join_inflight--;
            if (++b->joined == b->nconns && !b->running)
                wb_run_start(b);
            else
                wb_chat_join_more(b);
        }
        return;
    }
    if (wb_jeq(&f[0], "error")) {
        char what[96];
        snprintf(what, sizeof what, "chat: the server answered error %.*s",
                 f[4].found ? (int)(f[4].len < 40 ? f[4].len : 40) : 1,
                 f[4].found ? (const char *)f[4].v : "?");
        wb_err_add(b, ERR_MISMATCH, c, what);
        return;
    }
    if (!wb_jeq(&f[0], "message"))
        return; /* welcome, presence, rooms, typing */

    /* text: "FFFFF SSSSSSSS TTTTTTTTTTTTTTTT ...": sender index, its sequence number, send time */
    uint64_t from, seq, ts;
    char want[32];
    if (!f[1].found || !f[2].found || !f[3].found || f[3].len < 31 ||
        !wb_hex_get(f[3].v, 5, &from) || !wb_hex_get(f[3].v + 6, 8, &seq) ||
        !wb_hex_get(f[3].v + 15, 16, &ts) || from >= b->nconns) {
        wb_err_add(b, ERR_MISMATCH, c, "chat: a message that is not one of ours");
        return;
    }
    struct conn *s = &b->conns[from];
    int wl = room_name(want, sizeof want, c->room);
    if (s->room != c->room || f[1].len != (size_t)wl || memcmp(f[1].v, want, (size_t)wl) != 0) {
        b->foreign++;
        wb_err_add(b, ERR_MISMATCH, c, "chat: a message of another room");
        return;
    }
    wl = nick_name(want, sizeof want, (uint32_t)from);
    if (f[2].len != (size_t)wl || memcmp(f[2].v, want, (size_t)wl) != 0) {
        wb_err_add(b, ERR_MISMATCH, c, "chat: the nick does not match the sender");
        return;
    }
    uint32_t *next = &c->recv_next[s->slot];
    if (seq < *next || seq >= s->send_seq) {
        b->dups++;
        wb_err_add(b, ERR_MISMATCH, c,
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
        wb_hist_add(&b->hist, t > ts ? t - ts : 0);
        b->win_msgs++;
        b->win_bytes += p->msg_off;
    }
    b->recv_total++;
    if (b->draining && b->delivered + b->gaps >= b->expected)
        wb_finish(b, "duration");
}
