#!/usr/bin/env bash
# Scale-out benchmark: broadcast deliveries per second through wsserver with 1 worker, 2 workers
# (built-in hub) and 2 workers on Redis (the same machine). wsbench's broadcast mode: one
# publisher keeps --depth messages in flight, each must reach every subscriber; subscribers
# spread over the workers (SO_REUSEPORT), so with 2 workers half of every delivery crosses the
# hub or Redis. Scenarios are interleaved, RUNS times; the table shows the median (and range).
# Server CPU is the whole process tree (master + workers, plus redis-server) over the wsbench run,
# in % of one CPU, and per delivery (that CPU time over msg/s x (warm-up + duration): connection
# set-up is counted too, a small error); "master" is the master's share. wsbench runs on the same
# machine and is single-threaded: on a small machine it, not the server, sets the ceiling, and
# every CPU a worker uses is taken from it. Nothing is pinned: the point is to use more CPUs.
#
# Environment: WSSERVER, WSBENCH (binaries), SCALE_RUNS (3), SCALE_DURATION (3 s),
# SCALE_WARMUP (1 s), SCALE_SUBSCRIBERS (1000), SCALE_DEPTH (64), SCALE_SIZE (32 bytes),
# SCALE_OUT (a JSON-lines file for the raw results; default: none).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSSERVER=${WSSERVER:-$ROOT/build/wsserver}
WSBENCH=${WSBENCH:-$ROOT/build/wsbench}
RUNS=${SCALE_RUNS:-3}
DURATION=${SCALE_DURATION:-3}
WARMUP=${SCALE_WARMUP:-1}
SUBS=${SCALE_SUBSCRIBERS:-1000}
DEPTH=${SCALE_DEPTH:-64}
SIZE=${SCALE_SIZE:-32}
OUT=${SCALE_OUT:-}
PY=/usr/bin/python3
APP=$ROOT/bench/apps/scale_broadcast.lua

if [[ ! -x $WSSERVER ]]; then
    make -C "$ROOT" build/wsserver >/dev/null
fi
if [[ ! -x $WSBENCH ]]; then
    make -C "$ROOT" build/wsbench >/dev/null
fi
command -v redis-server >/dev/null || { echo "scale.sh: redis-server is missing" >&2; exit 2; }
command -v ss >/dev/null || { echo "scale.sh: ss (iproute2) is missing" >&2; exit 2; }

TMP=$(mktemp -d /tmp/wsscale.XXXXXX)
SPID=
RPID=
# descendants PID: every process below PID (from /proc), so that none is left behind
descendants() {
    local p
    for p in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$p"
        descendants "$p"
    done
}
stop_pid() { # stop_pid PID: SIGTERM, wait up to 10 s, then SIGKILL; checks its children are gone
    local pid=$1 kids k
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kids=$(descendants "$pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then
        echo "scale.sh: $pid ignored SIGTERM for 10 s; killed" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for k in $kids; do
        for _ in $(seq 40); do kill -0 "$k" 2>/dev/null || break; sleep 0.05; done
        if kill -0 "$k" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$k/stat" 2>/dev/null) != Z ]]; then
            echo "scale.sh: worker $k outlived its master $pid; killed" >&2
            kill -KILL "$k" 2>/dev/null || true
        fi
    done
}
cleanup() {
    stop_pid "$SPID"
    stop_pid "$RPID"
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
snapshot_server
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# redis-server for the Redis scenario: 127.0.0.1, a free port, no persistence
RPORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$RPORT" --save "" --appendonly no --protected-mode no \
    >"$TMP/redis.log" 2>&1 &
RPID=$!
for _ in $(seq 100); do
    [[ $(redis-cli -h 127.0.0.1 -p "$RPORT" ping 2>/dev/null) == PONG ]] && break
    sleep 0.05
done
[[ $(redis-cli -h 127.0.0.1 -p "$RPORT" ping 2>/dev/null) == PONG ]] ||
    { echo "scale.sh: redis-server did not start" >&2; exit 1; }

# cpu_ticks PID...: utime + stime of those processes, in clock ticks
cpu_ticks() {
    local t=0 p v
    for p in "$@"; do
        v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + v))
    done
    echo "$t"
}

# start_server WORKERS [REDIS_URL]: sets SPID, SPORT; returns when every worker listens (and is
# subscribed to Redis)
start_server() {
    local workers=$1 redis=${2:-} args
    SPORT=$(free_port)
    args=(-l "127.0.0.1:$SPORT" --workers "$workers" --log-level warn --max-connections 20000)
    [[ -n $redis ]] && args+=(--redis "$redis")
    "$TMP/bin/wsserver" "${args[@]}" "$APP" >>"$TMP/server.log" 2>&1 &
    SPID=$!
    for _ in $(seq 200); do
        kill -0 "$SPID" 2>/dev/null || break
        if (($(ss -Hltn "sport = :$SPORT" 2>/dev/null | wc -l) >= workers)) &&
            { [[ -z $redis ]] ||
                (($(redis-cli -p "$RPORT" pubsub numsub wsserver:all | tail -1) >= workers)); }; then
            return 0
        fi
        sleep 0.05
    done
    echo "scale.sh: wsserver --workers $workers did not start; log:" >&2
    tail -5 "$TMP/server.log" >&2
    return 1
}

# one line per run, as it happens
cat >"$TMP/line.py" <<'PYEOF'
import json, sys
r = json.loads(sys.stdin.read())
b, head = r["result"], f"  run {r['run']} {r['scenario']:17}"
if b is None:
    print(head, f"no result (exit {r['exit']})")
    sys.exit()
print(head, f"{b['msgs_per_s']:10.0f} deliveries/s  p99 {b['latency_us']['p99']:7.0f} us"
      f"  server {r['server_cpu_pct']:4.0f}% cpu"
      + (f" + redis {r['redis_cpu_pct']:3.0f}%" if "Redis" in r["scenario"] else "")
      + f" ({r['master_cpu_pct']:.0f}% master)"
      + f" ~{r['server_ns_per_delivery']:.0f} ns/delivery"
      + f"  wsbench {b['client_cpu_pct']:3.0f}%  errors {b['errors']['total']}"
      + ("" if r["alive"] else "  SERVER DIED"))
PYEOF

SCENARIOS=(
    "1 worker|1|"
    "2 workers, hub|2|"
    "2 workers, Redis|2|redis://127.0.0.1:$RPORT"
)
RAW=$TMP/raw.jsonl
: >"$RAW"
echo "scale.sh: broadcast to $SUBS subscribers, ${SIZE}-byte messages, depth $DEPTH;" \
    "$RUNS x ${DURATION}s (+${WARMUP}s warm-up); $(nproc) CPUs; load average" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
T0=$SECONDS
for run in $(seq "$RUNS"); do
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r name workers redis <<<"$entry"
        start_server "$workers" "$redis" || exit 1
        mapfile -t procs < <(echo "$SPID"; descendants "$SPID")
        c0=$(cpu_ticks "${procs[@]}")
        m0=$(cpu_ticks "$SPID")
        r0=$(cpu_ticks "$RPID")
        w0=$(date +%s.%N)
        rc=0
        out=$(timeout 60 "$WSBENCH" broadcast -p "$SPORT" -c "$SUBS" -s "$SIZE" -d "$DEPTH" \
            -t "$DURATION" -w "$WARMUP" --label "$name" 2>>"$TMP/wsbench.log") || rc=$?
        w1=$(date +%s.%N)
        c1=$(cpu_ticks "${procs[@]}")
        m1=$(cpu_ticks "$SPID")
        r1=$(cpu_ticks "$RPID")
        alive=true
        kill -0 "$SPID" 2>/dev/null || alive=false
        stop_pid "$SPID"
        SPID=
        [[ -n $out ]] || { out=null; tail -3 "$TMP/wsbench.log" >&2; }
        $PY - "$out" "$run" "$name" "$rc" "$alive" "$c0" "$c1" "$r0" "$r1" "$m0" "$m1" "$w0" \
            "$w1" "$(getconf CLK_TCK)" "$WARMUP" "$DURATION" "$workers" >>"$RAW" <<'PYEOF'
import json, sys
out, run, name, rc, alive = sys.argv[1:6]
c0, c1, r0, r1, m0, m1 = map(int, sys.argv[6:12])
w0, w1, hz, warmup, duration = map(float, sys.argv[12:17])
workers = int(sys.argv[17])
wall = w1 - w0
b = json.loads(out)
cpu = ((c1 - c0) + (r1 - r0)) / hz
print(json.dumps({"run": int(run), "scenario": name, "exit": int(rc), "alive": alive == "true",
                  "server_cpu_pct": 100.0 * (c1 - c0) / hz / wall,
                  "master_cpu_pct": 100.0 * (m1 - m0) / hz / wall if workers > 1 else 0.0,
                  "redis_cpu_pct": 100.0 * (r1 - r0) / hz / wall,
                  "server_ns_per_delivery": 1e9 * cpu / (b["msgs_per_s"] * (warmup + duration))
                  if b and b["msgs_per_s"] else None,
                  "result": b}))
PYEOF
        tail -1 "$RAW" | $PY "$TMP/line.py"
    done
done

$PY - "$RAW" <<'PYEOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
order = list(dict.fromkeys(r["scenario"] for r in rows))
print()
print(f"| {'scenario':17} | {'deliveries/s (median)':>21} | {'range':>19} | {'vs 1 worker':>11} "
      f"| {'p50 us':>7} | {'p99 us':>7} | {'server CPU':>10} | {'of it master':>12} "
      f"| {'CPU ns/delivery':>15} | {'errors':>6} |")
print(f"|{'-' * 19}|{'-' * 22}:|{'-' * 20}:|{'-' * 12}:|{'-' * 8}:|{'-' * 8}:|{'-' * 11}:"
      f"|{'-' * 13}:|{'-' * 16}:|{'-' * 7}:|")
base = None
for name in order:
    rs = [r for r in rows if r["scenario"] == name and r["result"]]
    if not rs:
        print(f"| {name:17} | {'no result':>21} |")
        continue
    rates = sorted(r["result"]["msgs_per_s"] for r in rs)
    med = statistics.median(rates)
    base = base or med
    p50 = statistics.median(r["result"]["latency_us"]["p50"] for r in rs)
    p99 = statistics.median(r["result"]["latency_us"]["p99"] for r in rs)
    cpu = statistics.median(r["server_cpu_pct"] + r["redis_cpu_pct"] for r in rs)
    master = statistics.median(r["master_cpu_pct"] for r in rs)
    ns = statistics.median(r["server_ns_per_delivery"] for r in rs)
    errs = sum(r["result"]["errors"]["total"] for r in rs) + sum(not r["alive"] for r in rs)
    rng = f"{rates[0]:.0f}-{rates[-1]:.0f}"
    print(f"| {name:17} | {med:21.0f} | {rng:>19} | {med / base:10.2f}x | {p50:7.0f} | "
          f"{p99:7.0f} | {cpu:9.0f}% | {master:11.0f}% | {ns:15.0f} | {errs:6d} |")
PYEOF
echo "scale.sh: done in $((SECONDS - T0)) s; load average $(cut -d' ' -f1-3 /proc/loadavg)"
if [[ -n $OUT ]]; then
    cp "$RAW" "$OUT"
fi
