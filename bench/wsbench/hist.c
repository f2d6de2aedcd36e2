/* The latency histogram: recording and quantiles. It knows nothing of what its samples
 * measure. */
#include "wsbench.h"

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

void wb_hist_add(struct hist *h, uint64_t ns)
{
    h->n[hist_index(ns)]++;
    h->count++;
    h->sum_ns += (double)ns;
    if (ns > h->max_ns)
        h->max_ns = ns;
}

double wb_hist_quantile_us(const struct hist *h, double q)
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
