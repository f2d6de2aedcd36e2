#!/usr/bin/env bash
# `make bench`: every scenario against wsserver (bench/apps/*.lua) and against node `ws`
# (bench/node/*.js) in the same run, servers pinned to one CPU and wsbench to the other,
# repeated BENCH_RUNS times; prints the medians with the wsserver/node ratio and saves
# bench/results/<date>-<commit>.json. It measures; it does not judge (targets are only shown).
# wsserver-only variants (wss://, permessage-deflate) are compared with a reference row of the
# same run, and the chat load (bench/chat_load.sh) runs once at the end.
#
# Environment: WSSERVER, WSBENCH (binaries; set by make), BENCH_RUNS (3), BENCH_DURATION (3 s),
# BENCH_WARMUP (1 s), BENCH_SERVER_CPU (0), BENCH_CLIENT_CPU (1), BENCH_ONLY (regex on scenario
# names, chat-2000 included), BENCH_IMPLS ("wsserver node"), BENCH_OUT (results file), BENCH_NICE
# (e.g. -10: run the servers and wsbench at that niceness, to stand out from other work on a
# shared machine), BENCH_CHAT_DURATION (10 s; 0 skips the chat load), BENCH_UWS (a local build of
# uWebSockets' examples/EchoServer.cpp listening on $PORT, see docs/performance.md: then "uws"
# runs the echo, connect and idle rows too, a C++ reference of the same run).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSSERVER=${WSSERVER:-$ROOT/build/wsserver}
WSBENCH=${WSBENCH:-$ROOT/build/wsbench}
RUNS=${BENCH_RUNS:-3}
DURATION=${BENCH_DURATION:-3}
WARMUP=${BENCH_WARMUP:-1}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
ONLY=${BENCH_ONLY:-}
NICE=()
[[ -n ${BENCH_NICE:-} ]] && NICE=(nice -n "$BENCH_NICE")
IMPLS=${BENCH_IMPLS:-wsserver node}
UWS=${BENCH_UWS:-}
if [[ -n $UWS ]]; then
    [[ -x $UWS ]] || { echo "run.sh: BENCH_UWS=$UWS is not an executable" >&2; exit 2; }
    IMPLS="$IMPLS uws"
fi
PY=/usr/bin/python3
WS_MODULE=$ROOT/tests/node_modules/ws

for f in "$WSSERVER" "$WSBENCH"; do
    [[ -x $f ]] || { echo "run.sh: $f is missing (use make bench)" >&2; exit 2; }
done
if [[ " $IMPLS " == *" node "* ]] && { ! command -v node >/dev/null || [[ ! -d $WS_MODULE ]]; }; then
    echo "run.sh: node or $WS_MODULE is missing (bash scripts/install-deps.sh installs them)" >&2
    exit 2
fi

TMP=$(mktemp -d /tmp/wsbench.XXXXXX)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
snapshot_server

# wsserver and node need 10000+ descriptors for the idle scenario.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < 10100)); then
    echo "run.sh: warning: only $(ulimit -n) file descriptors; the idle scenario will fail" >&2
fi

# Scenarios: name | server app | wsbench arguments | target ratio (for information) | the
# implementations it runs on (empty: all) | the reference row (variants: same wsserver work over
# TLS or with permessage-deflate, compared with that row of the same run).
# Server apps: echo, broadcast, idle (bench/apps/*.lua, node: bench/node/*.js); echo-tls (echo on
# a tls: listener, certificate from scripts/gen-test-cert.sh); echo-deflate, broadcast-deflate
# (--compression on); sleep0 (echo after one ws.sleep(0): the cost of one wait); http-get (echo
# after one ws.http.get to a local keep-alive upstream, bench/node/upstream.js on wsbench's
# CPU); publish (broadcast through a topic: ws.publish against ws.broadcast); idle-keep (echo
# whose open handler keeps each connection's Lua object: idle memory with the Lua side). The echo
# rows at 10, 100 and 1000 connections feed bench/plot.py. A new app: a line in app_file.
SCENARIOS=(
    "echo-c10|echo|echo -c 10 -s 32 -d 1|||"
    "echo-c100|echo|echo -c 100 -s 32 -d 1|1.5||"
    "echo-c100-d16|echo|echo -c 100 -s 32 -d 16|10||"
    "echo-c1000|echo|echo -c 1000 -s 32 -d 1|||"
    "echo-64k|echo|echo -c 10 -s 65536 -b -d 1|2.5||"
    "echo-json1k|echo|echo -c 100 -s 1024 --json -d 16||wsserver|"
    "broadcast-1000|broadcast|broadcast -c 1000 -s 32 -d 16|15||"
    "broadcast-1000-w1|broadcast|broadcast -c 1000 -s 32 -d 1|||"
    "broadcast-json1k|broadcast|broadcast -c 1000 -s 1024 --json -d 16||wsserver|"
    "connect|echo|connect -c 50|||"
    "idle-10000|idle|idle -c 10000 -w 1 -t 1|||"
    "idle-keep-10000|idle-keep|idle -c 10000 -w 1 -t 1||wsserver|idle-10000"
    "tls-echo-c100-d16|echo-tls|echo -c 100 -s 32 -d 16 --tls||wsserver|echo-c100-d16"
    "tls-echo-64k|echo-tls|echo -c 10 -s 65536 -b -d 1 --tls||wsserver|echo-64k"
    "tls-connect|echo-tls|connect -c 50 --tls||wsserver|connect"
    "deflate-echo-json1k|echo-deflate|echo -c 100 -s 1024 --json -d 16 --deflate||wsserver|echo-json1k"
    "deflate-broadcast-json1k|broadcast-deflate|broadcast -c 1000 -s 1024 --json -d 16 --deflate||wsserver|broadcast-json1k"
    "sleep0-echo-c100|sleep0|echo -c 100 -s 32 -d 1||wsserver|echo-c100"
    "sleep0-echo-c100-d16|sleep0|echo -c 100 -s 32 -d 16||wsserver|echo-c100-d16"
    "http-get-echo-c100|http-get|echo -c 100 -s 32 -d 1||wsserver|echo-c100"
    "publish-1000|publish|broadcast -c 1000 -s 32 -d 16||wsserver|broadcast-1000"
)
# Server app groups in the order they run; variants right after the group of their reference rows.
APPS=(echo echo-tls echo-deflate sleep0 http-get broadcast broadcast-deflate publish idle idle-keep)
CHAT_NAME=chat-2000
CHAT_DURATION=${BENCH_CHAT_DURATION:-10}

# app_file APP -> the wsserver app (bench/apps) a server app runs.
app_file() {
    case $1 in
    broadcast*) echo broadcast ;;
    publish) echo publish ;;
    sleep0) echo sleep0 ;;
    http-get) echo http_get ;;
    idle-keep) echo idle_keep ;;
    *) echo echo ;;
    esac
}

# wait_listening PID PORT: true once PID listens on PORT (5 s at most).
wait_listening() {
    for _ in $(seq 100); do
        ss -Hltnp "sport = :$2" 2>/dev/null | grep -q "pid=$1," && return 0
        kill -0 "$1" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# The http-get app's upstream: node's http server (bench/node/upstream.js) on wsbench's CPU,
# started once; sets UPSTREAM.
UPSTREAM=
start_upstream() {
    [[ -z $UPSTREAM ]] || return 0
    local port pid
    port=$(free_port)
    "${NICE[@]}" taskset -c "$CLIENT_CPU" node "$ROOT/bench/node/upstream.js" "$port" \
        >>"$TMP/upstream.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_listening "$pid" "$port" || { echo "run.sh: the upstream did not start" >&2; return 1; }
    UPSTREAM=http://127.0.0.1:$port/
}

# start_server IMPL APP -> sets SPID and SPORT; retries on another port if one was taken meanwhile.
start_server() {
    for _ in 1 2 3; do
        start_server_once "$@" && return 0
    done
    return 1
}

start_server_once() {
    local impl=$1 app=$2 file listen
    local -a extra=()
    SPORT=$(free_port)
    if [[ $impl == uws ]]; then
        PORT=$SPORT "${NICE[@]}" taskset -c "$SERVER_CPU" "$UWS" >>"$TMP/server.log" 2>&1 &
    elif [[ $impl == wsserver ]]; then
        file=$ROOT/bench/apps/$(app_file "$app").lua
        if [[ $app == http-get ]]; then
            start_upstream || return 1
            export BENCH_UPSTREAM=$UPSTREAM
        fi
        listen=127.0.0.1:$SPORT
        case $app in
        *-tls)
            listen=tls:$listen
            extra=(--tls-cert "$TMP/certs/server.pem" --tls-key "$TMP/certs/server.key")
            ;;
        *-deflate) extra=(--compression on) ;;
        *-redis) file=$ROOT/bench/apps/redis_incr.lua ;;
        esac
        "${NICE[@]}" taskset -c "$SERVER_CPU" "$TMP/bin/wsserver" -l "$listen" --max-connections 20000 \
            --log-level warn "${extra[@]}" "$file" >>"$TMP/server.log" 2>&1 &
    else
        file=$ROOT/bench/node/$([[ $app == broadcast ]] && echo broadcast || echo echo).js
        "${NICE[@]}" taskset -c "$SERVER_CPU" node "$file" "$SPORT" >>"$TMP/server.log" 2>&1 &
    fi
    SPID=$!
    PIDS+=("$SPID")
    wait_listening "$SPID" "$SPORT" && return 0
    echo "run.sh: $impl ($app) did not start on port $SPORT; log:" >&2
    tail -3 "$TMP/server.log" >&2
    kill -KILL "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    return 1
}

stop_server() {
    local pid=$1
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "run.sh: server $pid ignored SIGTERM for 5 s; killed" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

RAW=$TMP/raw.jsonl
: >"$RAW"
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$SECONDS
echo "wsbench: $RUNS runs x ${DURATION}s (+${WARMUP}s warm-up); servers on CPU $SERVER_CPU," \
    "wsbench on CPU $CLIENT_CPU; load average $LOADAVG_START"

# run_group RUN IMPL APP: one fresh server for the scenarios of APP, one wsbench run each.
run_group() {
    local run=$1 impl=$2 app=$3 entry name sapp args rc out
    local -a todo=()
    local impls
    [[ $impl != uws || $app == echo || $app == idle ]] || return 0 # its app echoes only
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r name sapp args _ impls _ <<<"$entry"
        [[ $sapp == "$app" ]] || continue
        [[ -z $impls || " $impls " == *" $impl "* ]] || continue
        [[ -z $ONLY || $name =~ $ONLY ]] || continue
        todo+=("$name|$args")
    done
    ((${#todo[@]})) || return 0
    start_server "$impl" "$app" || return 1
    for entry in "${todo[@]}"; do
        IFS='|' read -r name args <<<"$entry"
        # shellcheck disable=SC2086 # args is a word list on purpose
        set -- $args
        local mode=$1
        shift
        local timing=(-t "$DURATION" -w "$WARMUP")
        [[ $mode == idle ]] && timing=()
        rc=0
        out=$("${NICE[@]}" taskset -c "$CLIENT_CPU" timeout 120 "$WSBENCH" "$mode" -p "$SPORT" "${timing[@]}" "$@" \
            --server-pid "$SPID" --label "$impl $name" 2>>"$TMP/wsbench.log") || rc=$?
        if [[ -z $out ]]; then
            echo "  run $run $impl $name: wsbench failed (exit $rc):" >&2
            tail -5 "$TMP/wsbench.log" >&2
            out=null
        fi
        local alive=true
        kill -0 "$SPID" 2>/dev/null || alive=false
        printf '{"run":%d,"impl":"%s","scenario":"%s","args":"%s","exit":%d,"server_alive":%s,"result":%s}\n' \
            "$run" "$impl" "$name" "$args" "$rc" "$alive" "$out" >>"$RAW"
        $PY - "$out" "$run" "$impl" "$name" <<'EOF'
import json, sys
r = json.loads(sys.argv[1]) if sys.argv[1] != "null" else None
head = f"  run {sys.argv[2]} {sys.argv[3]:8} {sys.argv[4]:18}"
if r is None:
    print(head, "no result"); sys.exit()
if r["mode"] == "idle":
    v = (f'{r["rss_per_conn_bytes"] or 0:10.0f} B/conn  (RssAnon {r["anon_per_conn_bytes"] or 0:.0f},'
         f' slope {r.get("rss_slope_bytes") or 0:.0f}/{r.get("anon_slope_bytes") or 0:.0f}; {r["open"]} open)')
else:
    v = f'{r["msgs_per_s"]:10.0f} msg/s'
if r.get("deflate"):
    v += f' ({r["ws_bytes_in_per_msg"]:.0f} B/msg in)'
cpu = r.get("server_cpu_us_per_msg")
print(head, v, f' p99 {r["latency_us"]["p99"]:8.0f} us',
      f' server {r.get("server_cpu_pct", 0):3.0f}% cpu' + (f' {cpu:.2f} us/msg' if cpu else ''),
      f' wsbench {r["client_cpu_pct"]:3.0f}% cpu',
      f' others {r.get("other_cpu_pct", 0):3.0f}% cpu',
      f' errors {r["errors"]["total"]}' if r["errors"]["total"] else '')
EOF
        if [[ $alive != true ]]; then
            echo "  run $run $impl $name: THE SERVER DIED; log:" >&2
            tail -20 "$TMP/server.log" >&2
            return 1
        fi
    done
    stop_server "$SPID"
}

# A throwaway certificate for the tls: listener.
if printf '%s\n' "${SCENARIOS[@]}" | grep -q '^[^|]*|[a-z]*-tls|' &&
    ! bash "$ROOT/scripts/gen-test-cert.sh" "$TMP/certs" >/dev/null; then
    echo "run.sh: scripts/gen-test-cert.sh failed" >&2
    exit 2
fi

# wsserver and node alternate group by group, so that both see the same machine noise; the
# wsserver-only variants run right after the group of their reference rows.
for run in $(seq "$RUNS"); do
    for app in "${APPS[@]}"; do
        for impl in $IMPLS; do
            run_group "$run" "$impl" "$app" || echo "  run $run $impl $app: group aborted" >&2
        done
    done
done

# One Redis INCR per message (bench/apps/redis_incr.lua), beside echo-c100-d16 of the same run:
# a redis-server of its own on the server's CPU, one fresh wsserver per run.
REDIS_NAME=redis-incr-c100-d16
if [[ " $IMPLS " == *" wsserver "* && ( -z $ONLY || $REDIS_NAME =~ $ONLY ) ]]; then
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
        SCENARIOS+=("$REDIS_NAME|echo-redis|echo -c 100 -s 32 -d 16||wsserver|echo-c100-d16")
        REDIS_PORT=$(free_port)
        taskset -c "$SERVER_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
            --appendonly no >"$TMP/redis.log" 2>&1 &
        PIDS+=("$!")
        for _ in $(seq 100); do
            redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
            sleep 0.05
        done
        export BENCH_REDIS_URL=redis://127.0.0.1:$REDIS_PORT
        for run in $(seq "$RUNS"); do
            run_group "$run" wsserver echo-redis || echo "  run $run wsserver echo-redis: aborted" >&2
        done
        echo "  redis: $(redis-cli -p "$REDIS_PORT" get bench:messages) INCRs in all"
    else
        echo "run.sh: redis-server or redis-cli missing: $REDIS_NAME skipped" >&2
    fi
fi

# The chat load, once: 2000 clients of examples/chat in 50 rooms (bench/chat_load.sh).
if [[ $CHAT_DURATION != 0 && " $IMPLS " == *" wsserver "* && ( -z $ONLY || $CHAT_NAME =~ $ONLY ) ]]; then
    rc=0
    out=$(WSSERVER="$TMP/bin/wsserver" WSBENCH="$WSBENCH" CHAT_DURATION="$CHAT_DURATION" \
        CHAT_WARMUP="$WARMUP" CHAT_LABEL="wsserver $CHAT_NAME" bash "$ROOT/bench/chat_load.sh" \
        2>>"$TMP/wsbench.log") || rc=$?
    alive=$([[ $rc == 3 ]] && echo false || echo true)
    if [[ -z $out ]]; then
        echo "  chat load failed (exit $rc):" >&2
        tail -5 "$TMP/wsbench.log" >&2
        out=null
    fi
    printf '{"run":1,"impl":"wsserver","scenario":"%s","args":"%s","exit":%d,"server_alive":%s,"result":%s}\n' \
        "$CHAT_NAME" "chat -c 2000 --rooms 50 --rate 1 -t $CHAT_DURATION" "$rc" "$alive" "$out" >>"$RAW"
    $PY - "$out" <<'EOF'
import json, sys
r = json.loads(sys.argv[1]) if sys.argv[1] != "null" else None
if r is None:
    print("  chat load: no result"); sys.exit()
l = r["latency_us"]
print(f'  chat load  {r["connections"]} clients, {r["rooms"]} rooms: {r["says_per_s"]:.0f} messages/s,'
      f' {r["msgs_per_s"]:.0f} deliveries/s, latency p50/p99/p99.9 {l["p50"]:.0f}/{l["p99"]:.0f}/{l["p999"]:.0f} us,'
      f' server {r.get("server_cpu_pct", 0):.0f}% cpu, {r["deliveries"]} of {r["deliveries_expected"]} delivered,'
      f' missing {r["missing"]}, duplicates {r["duplicates"]}, other room {r["other_room"]}, errors {r["errors"]["total"]}')
EOF
fi

# Postgres: one SELECT by primary key per message (bench/pg_load.sh: a throwaway cluster,
# bench/apps/pg_select.lua) beside plain echo with the same wsbench arguments, alternating,
# BENCH_RUNS times. Rows pg-select-c100-d16 and pg-echo-c100-d16 in the results' "raw".
PG_NAME=pg-select-c100-d16
if [[ " $IMPLS " == *" wsserver "* && ( -z $ONLY || $PG_NAME =~ $ONLY ) ]]; then
    rc=0
    WSSERVER="$TMP/bin/wsserver" WSBENCH="$WSBENCH" PG_RUNS="$RUNS" PG_DURATION="$DURATION" \
        PG_WARMUP="$WARMUP" bash "$ROOT/bench/pg_load.sh" >"$TMP/pg.jsonl" 2>>"$TMP/wsbench.log" || rc=$?
    ((rc == 0)) || { echo "  postgres load failed (exit $rc):" >&2; tail -5 "$TMP/wsbench.log" >&2; }
    $PY - "$TMP/pg.jsonl" "$RAW" <<'EOF2'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
with open(sys.argv[2], "a") as raw:
    for i, r in enumerate(rows):
        name = "pg-select-c100-d16" if r["app"] == "pg_select" else "pg-echo-c100-d16"
        raw.write(json.dumps({"run": i // 2 + 1, "impl": "wsserver", "scenario": name,
                              "args": "echo -c 100 -s 32 -d 16", "exit": 0, "server_alive": True,
                              "result": r}) + "\n")
def med(app, f):
    xs = [f(r) for r in rows if r["app"] == app]
    return statistics.median(xs) if xs else None
pg, echo = med("pg_select", lambda r: r["msgs_per_s"]), med("echo", lambda r: r["msgs_per_s"])
if pg is None or echo is None:
    print("  postgres load: no result"); sys.exit()
pg99, echo99 = med("pg_select", lambda r: r["latency_us"]["p99"]), med("echo", lambda r: r["latency_us"]["p99"])
print(f"  postgres load (echo -c 100 -s 32 -d 16, median of {len(rows) // 2}): one SELECT by primary key"
      f" per message {pg:,.0f} msgs/s, p99 {pg99:,.0f} us; plain echo {echo:,.0f} msgs/s,"
      f" p99 {echo99:,.0f} us; {pg / echo:.3f}x of echo")
EOF2
fi

DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
OUT=${BENCH_OUT:-$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)-$COMMIT.json}
mkdir -p "$(dirname "$OUT")"
SCEN_FILE=$TMP/scenarios
printf '%s\n' "${SCENARIOS[@]}" >"$SCEN_FILE"

$PY - "$RAW" "$OUT" "$SCEN_FILE" <<EOF
import json, os, platform, statistics, subprocess, sys
raw_path, out_path, scen_path = sys.argv[1:4]
raw = [json.loads(l) for l in open(raw_path) if l.strip()]

def cpu_model():
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()

def node_version():
    try:
        return subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None

def ws_version():
    try:
        return json.load(open("$WS_MODULE/package.json"))["version"]
    except OSError:
        return None

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

scenarios = []
for line in open(scen_path):
    name, app, args, target, impls, ref = line.rstrip("\n").split("|")
    row = {"name": name, "app": app, "args": args, "target": float(target) if target else None,
           "impls": impls or "$IMPLS"}
    if ref:
        row["ref"] = ref
    if not any(r["scenario"] == name for r in raw):
        continue
    for impl in "$IMPLS".split():
        rs = [r for r in raw if r["impl"] == impl and r["scenario"] == name]
        ok = [r["result"] for r in rs if r["result"]]
        if not rs:
            continue
        idle = args.startswith("idle")
        s = {
            "runs": len(rs),
            "value": med([r["rss_per_conn_bytes"] if idle else r["msgs_per_s"] for r in ok]),
            "unit": "bytes/conn" if idle else ("handshakes/s" if args.startswith("connect")
                                             else "deliveries/s" if app.startswith(("broadcast", "publish"))
                                             else "msgs/s"),
            "mb_per_s": med([r["mb_per_s"] for r in ok]),
            "p50_us": med([r["latency_us"]["p50"] for r in ok]),
            "p99_us": med([r["latency_us"]["p99"] for r in ok]),
            "p999_us": med([r["latency_us"]["p999"] for r in ok]),
            "server_cpu_us_per_msg": med([r.get("server_cpu_us_per_msg") for r in ok]),
            "ws_bytes_in_per_msg": med([r.get("ws_bytes_in_per_msg") for r in ok]),
            "ws_bytes_out_per_msg": med([r.get("ws_bytes_out_per_msg") for r in ok]),
            "server_cpu_pct": med([r.get("server_cpu_pct") for r in ok]),
            "client_cpu_pct": med([r["client_cpu_pct"] for r in ok]),
            "client_cpu_us_per_msg": med([r["client_cpu_us_per_msg"] for r in ok]),
            "other_cpu_pct": med([r.get("other_cpu_pct") for r in ok]),
            "anon_per_conn_bytes": med([r.get("anon_per_conn_bytes") for r in ok]),
            "rss_slope_bytes": med([r.get("rss_slope_bytes") for r in ok]),
            "anon_slope_bytes": med([r.get("anon_slope_bytes") for r in ok]),
            "errors": sum(r["errors"]["total"] for r in ok),
            "failed_runs": sum(1 for r in rs if not r["result"] or not r["server_alive"]),
        }
        row[impl] = s
    w, n = row.get("wsserver"), row.get("node")
    if w and n and w["value"] and n["value"]:
        # higher is better for rates; for memory the ratio is node/wsserver
        row["ratio"] = (n["value"] / w["value"]) if args.startswith("idle") else (w["value"] / n["value"])
    if w and n and w["server_cpu_us_per_msg"] and n["server_cpu_us_per_msg"]:
        # server CPU per message, node/wsserver: the ratio that machine noise disturbs least
        row["cpu_ratio"] = n["server_cpu_us_per_msg"] / w["server_cpu_us_per_msg"]
    scenarios.append(row)

# Variants against their reference rows (wsserver both): the ratio of the medians.
by_name = {s["name"]: s for s in scenarios}
for row in scenarios:
    ref = by_name.get(row.get("ref"))
    v, r = row.get("wsserver"), (ref or {}).get("wsserver")
    if v and r and v["value"] and r["value"]:
        row["ref_ratio"] = v["value"] / r["value"]
    if v and r and v["server_cpu_us_per_msg"] and r["server_cpu_us_per_msg"]:
        row["ref_cpu_ratio"] = v["server_cpu_us_per_msg"] / r["server_cpu_us_per_msg"]
        # what the variant adds per message (a wait: ws.sleep(0), ws.http.get)
        row["ref_cpu_added_us"] = v["server_cpu_us_per_msg"] - r["server_cpu_us_per_msg"]

# The chat load: one run.
chat = None
for r in raw:
    if r["scenario"] == "$CHAT_NAME":
        chat = {"name": r["scenario"], "args": r["args"], "failed": not r["result"] or not r["server_alive"],
                "result": r["result"]}

doc = {
    "date": "$DATE",
    "commit": "$COMMIT",
    "dirty": $([[ $DIRTY == true ]] && echo True || echo False),
    "machine": {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "node": node_version(),
        "node_ws": ws_version(),
        "loadavg_start": "$LOADAVG_START",
        "loadavg_end": " ".join(open("/proc/loadavg").read().split()[:3]),
    },
    "config": {"runs": $RUNS, "duration_s": $DURATION, "warmup_s": $WARMUP, "nice": "${BENCH_NICE:-}",
               "server_cpu": $SERVER_CPU, "client_cpu": $CLIENT_CPU, "elapsed_s": $((SECONDS - T0))},
    "scenarios": scenarios,
    "chat": chat,
    "raw": raw,
}
json.dump(doc, open(out_path, "w"), indent=1)

def f(v, unit=""):
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"

def pct(v):
    return "-" if v is None else f"{v:.0f}"

def print_table(rows, text_cols):
    """rows[0] is the header; the first text_cols columns are left-aligned, the others right."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for i, r in enumerate(rows):
        print("  ".join(str(c).ljust(widths[k]) if k < text_cols else str(c).rjust(widths[k])
                        for k, c in enumerate(r)))
        if i == 0:
            print("  ".join("-" * w for w in widths))

print()
print(f"medians of {$RUNS} runs; commit {doc['commit']}{' (dirty tree)' if doc['dirty'] else ''}; "
      f"{doc['machine']['cpu_model']}, {doc['machine']['nproc']} CPUs, kernel {doc['machine']['kernel']}")
hdr = ("scenario", "unit", "wsserver", "node ws", "ratio", "target",
       "srv us/msg ws", "srv us/msg node", "cpu ratio", "wsbench cpu% ws/node", "others cpu%", "p99 us ws/node",
       "errors")
rows = [hdr]
for s in scenarios:
    if "ref" in s or s["impls"] == "wsserver":
        continue
    w, n = s.get("wsserver") or {}, s.get("node") or {}
    unit = (w or n).get("unit", "")
    ratio = s.get("ratio")
    rows.append((
        s["name"], unit, f(w.get("value")), f(n.get("value")),
        (f"{ratio:.2f}x" + (" (node/ws)" if unit == "bytes/conn" else "")) if ratio else "-",
        f"{s['target']:g}x" if s["target"] else ("<=1024 B" if unit == "bytes/conn" else ""),
        f(w.get("server_cpu_us_per_msg")), f(n.get("server_cpu_us_per_msg")),
        f"{s['cpu_ratio']:.2f}x" if s.get("cpu_ratio") else "-",
        f"{pct(w.get('client_cpu_pct'))}/{pct(n.get('client_cpu_pct'))}",
        f"{pct(w.get('other_cpu_pct'))}/{pct(n.get('other_cpu_pct'))}",
        f"{f(w.get('p99_us'))}/{f(n.get('p99_us'))}",
        f"{w.get('errors', 0)}/{n.get('errors', 0)}" + (" FAILED RUNS" if w.get("failed_runs") or n.get("failed_runs") else ""),
    ))
print_table(rows, 2)

uws_rows = [s for s in scenarios if s.get("uws") and s.get("wsserver")]
if uws_rows:
    print()
    print("uWebSockets (examples/EchoServer.cpp, C++) in the same run:")
    hdr = ("scenario", "unit", "wsserver", "uws", "ratio", "srv us/msg ws", "srv us/msg uws",
           "cpu ratio ws/uws", "p99 us ws/uws", "errors")
    rows = [hdr]
    for s in uws_rows:
        w, u = s["wsserver"], s["uws"]
        ratio = w["value"] / u["value"] if w["value"] and u["value"] else None
        cw, cu = w.get("server_cpu_us_per_msg"), u.get("server_cpu_us_per_msg")
        rows.append((s["name"], w["unit"], f(w["value"]), f(u["value"]),
                     f"{ratio:.2f}x" if ratio else "-", f(cw), f(cu),
                     f"{cw / cu:.2f}x" if cw and cu else "-",
                     f"{f(w.get('p99_us'))}/{f(u.get('p99_us'))}",
                     f"{w.get('errors', 0)}/{u.get('errors', 0)}"))
    print_table(rows, 2)
    print("ratio: wsserver/uws of the rate (idle: of the memory per connection); cpu ratio: wsserver's")
    print("  server CPU per message over uws's (above 1: wsserver spends more).")

idle_rows = [(s["name"], impl, s[impl]) for s in scenarios if s["args"].startswith("idle")
             for impl in "$IMPLS".split() if s.get(impl)]
if idle_rows:
    print()
    print("idle memory per connection (bytes; after one warm-up connection; medians):")
    rows = [("scenario", "impl", "VmRSS", "RssAnon", "VmRSS slope", "RssAnon slope", "errors")]
    for name, impl, v in idle_rows:
        rows.append((name, impl, f(v["value"]), f(v.get("anon_per_conn_bytes")),
                     f(v.get("rss_slope_bytes")), f(v.get("anon_slope_bytes")), str(v["errors"])))
    print_table(rows, 2)
    print("slope: from half the connections to all of them (what one more connection costs);")
    print("  idle-keep-10000: the app keeps each connection's Lua object (bench/apps/idle_keep.lua).")

variants = [s for s in scenarios if "ref" in s]
if variants:
    print()
    print("wsserver variants against a reference row of the same run (wsserver both):")
    hdr = ("variant", "reference", "unit", "variant", "reference", "ratio", "srv us/msg var/ref",
           "cpu ratio", "added us/msg", "ws B/msg in var/ref", "wsbench cpu% var/ref", "others cpu%", "p99 us var/ref", "errors")
    rows = [hdr]
    for s in variants:
        v, r = s.get("wsserver") or {}, (by_name.get(s["ref"], {}).get("wsserver") or {})
        rows.append((
            s["name"], s["ref"], v.get("unit", ""), f(v.get("value")), f(r.get("value")),
            f"{s['ref_ratio']:.2f}x" if s.get("ref_ratio") else "-",
            f"{f(v.get('server_cpu_us_per_msg'))}/{f(r.get('server_cpu_us_per_msg'))}",
            f"{s['ref_cpu_ratio']:.2f}x" if s.get("ref_cpu_ratio") else "-",
            f"{s['ref_cpu_added_us']:+.2f}" if s.get("ref_cpu_added_us") is not None else "-",
            f"{f(v.get('ws_bytes_in_per_msg'))}/{f(r.get('ws_bytes_in_per_msg'))}",
            f"{pct(v.get('client_cpu_pct'))}/{pct(r.get('client_cpu_pct'))}",
            f"{pct(v.get('other_cpu_pct'))}/{pct(r.get('other_cpu_pct'))}",
            f"{f(v.get('p99_us'))}/{f(r.get('p99_us'))}",
            f"{v.get('errors', 0)}/{r.get('errors', 0)}" + (" FAILED RUNS" if v.get("failed_runs") or r.get("failed_runs") else ""),
        ))
    print_table(rows, 3)
    print("ratio and cpu ratio: variant/reference (TLS/plain, compression on/off, one wait per message);")
    print("  added us/msg: server CPU per message of the variant minus the reference's; ws B/msg in: WebSocket")
    print("  bytes received per message or delivery (frames; under TLS the plaintext).")

if chat:
    r = chat["result"]
    print()
    if not r:
        print(f"chat load ({chat['args']}): FAILED, no result")
    else:
        l = r["latency_us"]
        print(f"chat load: {r['connections']} clients of examples/chat (rate limit raised) in {r['rooms']} rooms, "
              f"{r['rate_per_client']:g} message/s each, {r['duration_s']:.0f} s:")
        print(f"  {r['says_per_s']:,.0f} messages/s in, {r['msgs_per_s']:,.0f} deliveries/s out; delivery latency"
              f" p50 {l['p50']:,.0f} us, p99 {l['p99']:,.0f} us, p99.9 {l['p999']:,.0f} us, max {l['max']:,.0f} us")
        print(f"  server {r.get('server_cpu_pct', 0):.0f}% cpu, {r.get('server_cpu_us_per_say', 0):.0f} us per message"
              f" ({r.get('server_cpu_us_per_msg') or 0:.2f} us per delivery); wsbench {r['client_cpu_pct']:.0f}% cpu;"
              f" others {r.get('other_cpu_pct', 0):.0f}% cpu; set-up (connect + join) {r['setup_s']:.1f} s")
        print(f"  delivered {r['deliveries']:,} of {r['deliveries_expected']:,}: missing {r['missing']},"
              f" duplicates {r['duplicates']}, from another room {r['other_room']}, errors {r['errors']['total']}"
              + (" SERVER DIED" if chat["failed"] else ""))

print()
print("ratio: wsserver/node of the median rate (idle: node/wsserver of the memory per connection).")
print("srv us/msg: server CPU (utime+stime) per message, delivery or handshake in the window;")
print("  cpu ratio = node/wsserver of it: how much less CPU wsserver spends on the same work.")
print("wsbench cpu%: the load generator's own CPU in the window (near 100%: it was the bottleneck).")
print("others cpu%: CPU used on the machine by neither wsbench nor the server (noise; 200 = 2 CPUs).")
print(f"results: {out_path}")
EOF
echo "elapsed $((SECONDS - T0)) s"
MSGS=$(grep -v '^wsbench [a-z]* c=' "$TMP/wsbench.log" | head -20 || true)
if [[ -n $MSGS ]]; then
    echo "wsbench reported (first 20 lines):"
    echo "$MSGS"
fi
