/* The command line: the mode, the options and their ranges, --help. The options are checked
 * against each other and the address resolved here; nothing is opened. */
#include "wsbench.h"

#include <errno.h>
#include <getopt.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const MODE_NAMES[] = {"echo", "broadcast", "idle", "connect", "chat"};

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

void wb_parse_args(struct opts *o, int argc, char **argv)
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
