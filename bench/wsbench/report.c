/* The result of a run: one JSON object on stdout (the fields by mode) and a summary line on
 * stderr. Rates come from the counters; nothing is measured here. */
#include "wsbench.h"

#include <stdio.h>

void wb_report(struct bench *b, const char *why)
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
           wb_hist_quantile_us(h, 0.5), wb_hist_quantile_us(h, 0.99), wb_hist_quantile_us(h, 0.999),
           (double)h->max_ns / 1000.0, h->count ? h->sum_ns / (double)h->count / 1000.0 : 0,
           (unsigned long long)h->count);
    printf(",\"errors\":{\"total\":%llu", (unsigned long long)errs);
    for (int i = 0; i < ERR_COUNT; i++)
        printf(",\"%s\":%llu", ERR_NAMES[i], (unsigned long long)b->errors[i]);
    printf("}");
    printf(",\"client_cpu_s\":%.3f,\"client_cpu_pct\":%.1f", ccpu,
           win_s > 0 ? 100.0 * ccpu / win_s : 0);
    printf(",\"client_cpu_us_per_msg\":%.3f", b->win_msgs ? ccpu * 1e6 / (double)b->win_msgs : 0);
    if (scpu >= 0) {
        printf(",\"server_pid\":%ld,\"server_cpu_s\":%.3f,\"server_cpu_pct\":%.1f,"
               "\"server_cpu_us_per_msg\":%.3f",
               o->server_pid, scpu, win_s > 0 ? 100.0 * scpu / win_s : 0,
               b->win_msgs ? scpu * 1e6 / (double)b->win_msgs : 0);
        /* split into user and kernel time: the kernel's share is mostly the system calls */
        double user = b->user_server1 - b->user_server0;
        printf(",\"server_user_us_per_msg\":%.3f,\"server_sys_us_per_msg\":%.3f",
               b->win_msgs ? user * 1e6 / (double)b->win_msgs : 0,
               b->win_msgs ? (scpu - user) * 1e6 / (double)b->win_msgs : 0);
    } else
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
            win_s > 0 ? (double)b->win_bytes / win_s / 1e6 : 0, wb_hist_quantile_us(h, 0.5),
            wb_hist_quantile_us(h, 0.99), (unsigned long long)errs,
            win_s > 0 ? 100.0 * ccpu / win_s : 0,
            win_s > 0 && scpu >= 0 ? 100.0 * scpu / win_s : 0);
}
