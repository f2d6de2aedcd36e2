#!/usr/bin/env bash
# `make bench-count`: instructions per echoed message, the figure that repeats from run to run
# and so compares two commits. wsserver runs bench/apps/echo.lua under callgrind; wsbench (native)
# sends COUNT_MESSAGES 32-byte messages over COUNT_CONNECTIONS connections, depth 1. A second run
# with COUNT_BASE messages is subtracted, so start-up, handshakes and shutdown cancel out.
#
# Environment: WSSERVER, WSBENCH (set by make), COUNT_MESSAGES (20000), COUNT_BASE (2000),
# COUNT_CONNECTIONS (20), COUNT_OUT (results file).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSSERVER=${WSSERVER:-$ROOT/build/wsserver}
WSBENCH=${WSBENCH:-$ROOT/build/wsbench}
MESSAGES=${COUNT_MESSAGES:-20000}
BASE=${COUNT_BASE:-2000}
CONNS=${COUNT_CONNECTIONS:-20}

for f in "$WSSERVER" "$WSBENCH"; do
    [[ -x $f ]] || { echo "count.sh: $f is missing (use make bench-count)" >&2; exit 2; }
done
if ! command -v valgrind >/dev/null; then
    echo "count.sh: installing valgrind" >&2
    SUDO=$([[ $(id -u) == 0 ]] || echo sudo)
    $SUDO apt-get install -y -qq valgrind >/dev/null ||
        { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq valgrind >/dev/null; }
fi

TMP=$(mktemp -d /tmp/wscount.XXXXXX)
SPID=
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap cleanup_single_server EXIT
trap 'exit 130' INT TERM
snapshot_server

# start N: the server under callgrind, listening; sets SPID and PORT. False if it did not start.
start() {
    local n=$1
    PORT=$(free_port)
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$n.out" \
        "$TMP/bin/wsserver" -l "127.0.0.1:$PORT" --log-level warn "$ROOT/bench/apps/echo.lua" \
        >"$TMP/server.$n.log" 2>&1 &
    SPID=$!
    for _ in $(seq 300); do
        ss -Hltnp "sport = :$PORT" 2>/dev/null | grep -q "pid=$SPID," && return 0
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=
    return 1
}

# count N -> prints "IR REPLIES ERRORS RATE" for a server that echoed N messages.
count() {
    local n=$1 port out rc=0
    start "$n" || start "$n" || start "$n" || { tail -5 "$TMP/server.$n.log" >&2; return 1; }
    port=$PORT
    out=$("$WSBENCH" echo -p "$port" -c "$CONNS" -s 32 -d 1 -n "$n" --stall 30 \
        --server-pid "$SPID" 2>>"$TMP/wsbench.log") || rc=$?
    kill -TERM "$SPID"
    for _ in $(seq 300); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    wait "$SPID" 2>/dev/null || true
    SPID=
    [[ -n $out ]] || { echo "count.sh: wsbench failed (exit $rc)" >&2; cat "$TMP/wsbench.log" >&2; return 1; }
    local ir
    ir=$(grep -E '^(summary|totals):' "$TMP/cg.$n.out" | head -1 | awk '{print $2}')
    /usr/bin/python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(sys.argv[2], r["messages"], r["errors"]["total"], r["msgs_per_s"])' "$out" "$ir"
}

echo "callgrind: wsserver echo, $CONNS connections, 32-byte text messages, depth 1"
read -r IR_BASE N_BASE E_BASE RATE_BASE < <(count "$BASE")
echo "  $N_BASE messages: $IR_BASE Ir (errors $E_BASE, $RATE_BASE msg/s under callgrind)"
read -r IR_FULL N_FULL E_FULL RATE_FULL < <(count "$MESSAGES")
echo "  $N_FULL messages: $IR_FULL Ir (errors $E_FULL, $RATE_FULL msg/s under callgrind)"

echo
echo "top functions of the $N_FULL-message run (self cost):"
callgrind_annotate --threshold=90 "$TMP/cg.$MESSAGES.out" 2>/dev/null |
    grep -E '^ *[0-9,]+ \([ 0-9.]+%\)' | head -15 || true

OUT=${COUNT_OUT:-$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)-$COMMIT-count.json}
mkdir -p "$(dirname "$OUT")"
/usr/bin/python3 - "$IR_BASE" "$N_BASE" "$IR_FULL" "$N_FULL" "$((E_BASE + E_FULL))" "$OUT" "$COMMIT" "$CONNS" "$DIRTY" <<'EOF'
import json, os, platform, sys, time
ir_b, n_b, ir_f, n_f, errors = (int(x) for x in sys.argv[1:6])
out, commit, conns, dirty = sys.argv[6], sys.argv[7], int(sys.argv[8]), sys.argv[9] == "true"
marginal = (ir_f - ir_b) / (n_f - n_b)
total = ir_f / n_f
doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit, "dirty": dirty,
       "kernel": platform.release(), "tool": "valgrind --tool=callgrind",
       "scenario": {"app": "bench/apps/echo.lua", "connections": conns, "size": 32, "depth": 1},
       "runs": [{"messages": n_b, "ir": ir_b}, {"messages": n_f, "ir": ir_f}],
       "ir_per_msg_total": round(total, 1), "ir_per_msg_marginal": round(marginal, 1),
       "errors": errors}
json.dump(doc, open(out, "w"), indent=1)
print()
print(f"instructions per message (total Ir / messages):          {total:10.0f}")
print(f"instructions per message (marginal, ({n_f} - {n_b}) runs): {marginal:10.0f}   <- compare commits")
if errors:
    print(f"ERRORS: {errors} (see wsbench output above)")
print(f"results: {out}")
EOF
