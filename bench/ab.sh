#!/usr/bin/env bash
# A/B of wsserver builds on one wsbench scenario: server CPU per message (per cycle in connect
# mode). Each binary in turn, round after round, so that the load of a shared machine falls on
# all of them alike; the summary gives each binary's median and its median same-round ratio to
# the first binary, and the medians of the user and kernel parts (the kernel's is mostly the
# system calls: a machine that slows one server's kernel time and not another's shows there).
# Usage: bench/ab.sh BASE_BINARY OTHER_BINARY... A binary written uws:PATH is
# a uWebSockets EchoServer build (docs/performance.md), started with its port in $PORT.
# Environment: WSBENCH (build/wsbench), AB_ROUNDS (5), AB_DURATION (3 s), AB_WARMUP (1 s),
# AB_ARGS (the wsbench mode and options: "connect -c 50"), AB_APP (bench/apps/echo.lua),
# AB_SERVER_CPU (0), AB_CLIENT_CPU (1), AB_NICE (e.g. -10, as root), AB_OUT (the rows as JSON
# lines, default: not kept).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSBENCH=${WSBENCH:-$ROOT/build/wsbench}
ROUNDS=${AB_ROUNDS:-5}
DURATION=${AB_DURATION:-3}
WARMUP=${AB_WARMUP:-1}
read -r -a ARGS <<<"${AB_ARGS:-connect -c 50}"
APP=${AB_APP:-$ROOT/bench/apps/echo.lua}
NICE=()
[[ -n ${AB_NICE:-} ]] && NICE=(nice -n "$AB_NICE")
(($# >= 2)) || {
    echo "usage: bench/ab.sh BASE_BINARY OTHER_BINARY..." >&2
    exit 2
}
TMP=$(mktemp -d /tmp/wsab.XXXXXX)
SPID=
trap 'cleanup_single_server' EXIT
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
export WSSERVER_LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua"
# copies, so that a rebuild during the run changes nothing
for i in $(seq $#); do
    cp "${!i#uws:}" "$TMP/wsserver-$i"
done
ROWS=$TMP/rows.jsonl
: >"$ROWS"
for round in $(seq "$ROUNDS"); do
    for i in $(seq $#); do
        port=$(free_port)
        if [[ ${!i} == uws:* ]]; then
            PORT=$port "${NICE[@]}" taskset -c "${AB_SERVER_CPU:-0}" "$TMP/wsserver-$i" \
                >>"$TMP/server.log" 2>&1 &
        else
            "${NICE[@]}" taskset -c "${AB_SERVER_CPU:-0}" "$TMP/wsserver-$i" -l "127.0.0.1:$port" \
                --max-connections 20000 --log-level warn "$APP" >>"$TMP/server.log" 2>&1 &
        fi
        SPID=$!
        for _ in $(seq 100); do
            [[ -n $(ss -Htln "sport = :$port" 2>/dev/null) ]] && break
            sleep 0.05
        done
        out=$("${NICE[@]}" taskset -c "${AB_CLIENT_CPU:-1}" timeout 120 "$WSBENCH" "${ARGS[@]}" \
            -p "$port" -t "$DURATION" -w "$WARMUP" --server-pid "$SPID" 2>>"$TMP/wsbench.log") ||
            out=null
        kill -TERM "$SPID" 2>/dev/null || true
        wait "$SPID" 2>/dev/null || true
        SPID=
        printf '{"round":%d,"binary":%d,"path":"%s","result":%s}\n' "$round" "$i" "${!i}" "$out" \
            >>"$ROWS"
        /usr/bin/python3 - "$ROWS" <<'EOF'
import json, sys
row = json.loads(open(sys.argv[1]).read().splitlines()[-1])
r = row["result"]
if r is None:
    print(f'round {row["round"]} #{row["binary"]} {row["path"]}: wsbench failed')
else:
    print(f'round {row["round"]} #{row["binary"]} {row["path"]}: '
          f'{r.get("server_cpu_us_per_msg") or 0:.2f} us server CPU per message '
          f'(user {r.get("server_user_us_per_msg") or 0:.2f}, '
          f'kernel {r.get("server_sys_us_per_msg") or 0:.2f}), '
          f'{r["msgs_per_s"]:.0f}/s, server {r.get("server_cpu_pct", 0):.0f}%, '
          f'others {r.get("other_cpu_pct", 0):.0f}%, errors {r["errors"]["total"]}')
EOF
    done
done
[[ -n ${AB_OUT:-} ]] && cp "$ROWS" "$AB_OUT"
/usr/bin/python3 - "$ROWS" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
cpu, split = {}, {}
for row in rows:
    r = row["result"]
    if r and r.get("server_cpu_us_per_msg"):
        cpu.setdefault(row["binary"], {})[row["round"]] = r["server_cpu_us_per_msg"]
        split.setdefault(row["binary"], []).append(
            (r.get("server_user_us_per_msg") or 0, r.get("server_sys_us_per_msg") or 0))
base = cpu.get(1, {})
print("binary: median us per message (all rounds) | of the base's median | median same-round ratio"
      " | medians of its user and kernel parts")
for b in sorted(cpu):
    paths = [row["path"] for row in rows if row["binary"] == b]
    vals = list(cpu[b].values())
    med = statistics.median(vals)
    ratios = [v / base[k] for k, v in cpu[b].items() if k in base]
    line = f'#{b} {paths[0]}: {med:.2f} ({" ".join(f"{v:.1f}" for v in vals)})'
    if base:
        line += f' | {med / statistics.median(base.values()):.3f}'
    if ratios:
        line += f' | {statistics.median(ratios):.3f}'
    user = statistics.median(u for u, _ in split[b])
    kernel = statistics.median(k for _, k in split[b])
    line += f' | user {user:.2f}, kernel {kernel:.2f}'
    print(line)
EOF
