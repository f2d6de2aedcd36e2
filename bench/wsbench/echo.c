/* Echo mode: --depth requests in flight per connection, each reply checked against its request
 * and its round trip recorded. */
#include "wsbench.h"

void wb_echo_send(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    c->sent_ns[c->send_seq % b->o.depth] = t;
    wb_enqueue(c, c->send_seq, t);
    c->send_seq++;
    c->inflight++;
}

void wb_on_echo_reply(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    uint64_t seq, ts;
    if (c->inflight == 0) {
        wb_conn_fail(c, ERR_MISMATCH, "reply without a request");
        return;
    }
    if (p->msg_opcode != b->opcode || p->msg_off != b->o.size || p->mismatch ||
        !wb_span_get(b, p->prefix, &seq, &ts) || seq != c->recv_seq)
        wb_err_add(b, ERR_MISMATCH, c, "echo reply differs from the request");
    if (b->measuring) {
        wb_hist_add(&b->hist, t - c->sent_ns[c->recv_seq % b->o.depth]);
        b->win_msgs++;
        b->win_bytes += p->msg_off;
    }
    c->recv_seq++;
    c->inflight--;
    b->recv_total++;
    wb_progress(b, t);
    if (b->running && !b->finished && (b->o.target == 0 || b->sent_total < b->o.target))
        wb_echo_send(c, t);
    if (b->o.target && b->recv_total >= b->o.target)
        wb_finish(b, "messages");
}
