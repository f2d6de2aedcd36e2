/* Broadcast mode: the publisher's window of --depth messages, each complete once every live
 * subscriber got it; subscriptions, and deliveries checked for content, order and gaps. */
#include "wsbench.h"

#include <string.h>

void wb_pub_send_more(struct bench *b)
{
    struct conn *p = b->pub;
    if (!p || p->state != CS_OPEN || !b->running || b->finished)
        return;
    while (b->pub_base != b->pub_next && b->acks[b->pub_base % b->o.depth] >= b->subs_live) {
        b->acks[b->pub_base % b->o.depth] = 0;
        b->pub_base++;
    }
    uint64_t t = wb_now_ns();
    while (b->pub_next - b->pub_base < b->o.depth) {
        uint32_t seq = b->pub_next;
        b->acks[b->pub_next % b->o.depth] = 0;
        b->pub_ns[b->pub_next % b->o.depth] = t;
        b->pub_next++;
        b->publishes++;
        if (b->measuring)
            b->win_publishes++;
        wb_enqueue(p, seq, t);
        b->pub_dirty = true;
    }
}

static void pub_ack(struct bench *b, uint32_t seq)
{
    if (seq - b->pub_base >= b->o.depth) /* already complete (a subscriber died meanwhile) */
        return;
    if (++b->acks[seq % b->o.depth] >= b->subs_live && seq == b->pub_base)
        wb_pub_send_more(b);
}

void wb_on_delivery(struct conn *c, uint64_t t)
{
    struct bench *b = c->b;
    struct parser *p = &c->p;
    uint64_t seq, ts;
    if (!c->subscribed) {
        if (p->msg_off != 2 || memcmp(p->prefix, "ok", 2) != 0) {
            wb_conn_fail(c, ERR_MISMATCH, "expected \"ok\" after \"sub\"");
            return;
        }
        c->subscribed = true;
        b->subs_live++;
        b->subs_ready++;
        wb_progress(b, t);
        if (b->subs_ready == b->nconns - 1 && b->pub->state == CS_OPEN && !b->running)
            wb_run_start(b);
        return;
    }
    if (p->msg_opcode != b->opcode || p->msg_off != b->o.size || p->mismatch ||
        !wb_span_get(b, p->prefix, &seq, &ts)) {
        wb_err_add(b, ERR_MISMATCH, c, "delivery differs from the published message");
        return;
    }
    uint32_t s = (uint32_t)seq, expect = c->last_seq + 1;
    if (s != expect) {
        if (s - expect > b->pub_next - expect) { /* older than expected: duplicate or reorder */
            wb_err_add(b, ERR_MISMATCH, c, "delivery out of order");
            return;
        }
        b->errors[ERR_MISSING] += s - expect;
        for (uint32_t k = expect; k != s; k++)
            pub_ack(b, k);
    }
    c->last_seq = s;
    if (b->measuring) {
        wb_hist_add(&b->hist, t > ts ? t - ts : 0);
        b->win_msgs++;
        b->win_bytes += p->msg_off;
    }
    b->recv_total++;
    wb_progress(b, t);
    pub_ack(b, s);
}
