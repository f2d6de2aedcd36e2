#!/usr/bin/env bash
# `make bench-count`: instructions per message, the figure that repeats from run to run and so
# compares two commits. For each scenario wsserver runs its app under callgrind and wsbench
# (native) sends N messages; a second run with N/10 messages is subtracted, so start-up,
# handshakes and shutdown cancel out. The first scenario (echo, 20 connections, depth 1) is the
# figure quoted in commit messages; the others: pipelined echo, 64 KiB binary echo, one
# ws.sleep(0) per message (the cost of one wait), and connect-upgrade-close cycles (two runs of
# different lengths; per handshake).
#
# Environment: WSSERVER, WSBENCH (set by make), COUNT_MESSAGES (20000: messages of the first
# scenario; the others scale from it), COUNT_ONLY (regex on scenario names), COUNT_KEEP (a
# folder that keeps the callgrind files), COUNT_OUT (results file).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSSERVER=${WSSERVER:-$ROOT/build/wsserver}
WSBENCH=${WSBENCH:-$ROOT/build/wsbench}
MESSAGES=${COUNT_MESSAGES:-20000}
ONLY=${COUNT_ONLY:-}
KEEP=${COUNT_KEEP:-}

# Scenarios: name | app (bench/apps) | wsbench arguments (mode first) | how much: messages as a
# percentage of COUNT_MESSAGES, or tSECONDS for a mode that runs for a time (connect: the two
# runs last SECONDS/4 and SECONDS; per handshake). Rows are added here.
SCENARIOS=(
    "echo-d1|echo|echo -c 20 -s 32 -d 1|100"
    "echo-c100-d16|echo|echo -c 100 -s 32 -d 16|200"
    "echo-64k|echo|echo -c 10 -s 65536 -b -d 1|10"
    "sleep0-d1|sleep0|echo -c 20 -s 32 -d 1|100"
    "connect|echo|connect -c 10|t8"
)

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

# start TAG APP: the server under callgrind, listening; sets SPID and PORT. False if it did not
# start.
start() {
    local tag=$1 app=$2
    PORT=$(free_port)
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.$tag.out" \
        "$TMP/bin/wsserver" -l "127.0.0.1:$PORT" --log-level warn "$ROOT/bench/apps/$app.lua" \
        >"$TMP/server.$tag.log" 2>&1 &
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

# count TAG APP AMOUNT MODE ARGS... -> prints "IR MESSAGES ERRORS RATE" for a server that echoed
# AMOUNT messages (-n AMOUNT), or ran for AMOUNT seconds (tAMOUNT).
count() {
    local tag=$1 app=$2 amount=$3 mode=$4 port out rc=0
    shift 4
    local -a how=(-n "$amount" --stall 30)
    [[ $amount != t* ]] || how=(-t "${amount#t}" -w 0)
    start "$tag" "$app" || start "$tag" "$app" || start "$tag" "$app" ||
        { tail -5 "$TMP/server.$tag.log" >&2; return 1; }
    port=$PORT
    # shellcheck disable=SC2068 # the arguments are a word list on purpose
    out=$("$WSBENCH" "$mode" -p "$port" $@ "${how[@]}" \
        --server-pid "$SPID" 2>>"$TMP/wsbench.log") || rc=$?
    kill -TERM "$SPID"
    for _ in $(seq 300); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
    wait "$SPID" 2>/dev/null || true
    SPID=
    [[ -n $out ]] || { echo "count.sh: wsbench failed (exit $rc)" >&2; cat "$TMP/wsbench.log" >&2; return 1; }
    [[ -z $KEEP ]] || { mkdir -p "$KEEP"; cp "$TMP/cg.$tag.out" "$KEEP/"; }
    local ir
    ir=$(grep -E '^(summary|totals):' "$TMP/cg.$tag.out" | head -1 | awk '{print $2}')
    /usr/bin/python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(sys.argv[2], r["messages"], r["errors"]["total"], r["msgs_per_s"])' "$out" "$ir"
}

RAW=$TMP/raw
: >"$RAW"
FIRST=
for entry in "${SCENARIOS[@]}"; do
    IFS='|' read -r name app args pct <<<"$entry"
    [[ -z $ONLY || $name =~ $ONLY ]] || continue
    if [[ $pct == t* ]]; then
        full=$pct
        base=t$(((${pct#t} + 3) / 4))
    else
        full=$((MESSAGES * pct / 100))
        base=$((full / 10))
    fi
    echo "callgrind: $name (bench/apps/$app.lua; wsbench $args)"
    # shellcheck disable=SC2086 # args is a word list on purpose
    read -r IR_B N_B E_B RATE_B < <(count "$name.base" "$app" "$base" $args)
    echo "  $N_B messages: $IR_B Ir (errors $E_B, $RATE_B msg/s under callgrind)"
    # shellcheck disable=SC2086
    read -r IR_F N_F E_F RATE_F < <(count "$name" "$app" "$full" $args)
    echo "  $N_F messages: $IR_F Ir (errors $E_F, $RATE_F msg/s under callgrind)"
    echo "$name|$app|$args|$IR_B|$N_B|$IR_F|$N_F|$((E_B + E_F))" >>"$RAW"
    [[ -n $FIRST ]] || FIRST=$name
done
[[ -n $FIRST ]] || { echo "count.sh: no scenario matches COUNT_ONLY=$ONLY" >&2; exit 2; }

echo
echo "top functions of the $FIRST run (self cost):"
callgrind_annotate --threshold=90 "$TMP/cg.$FIRST.out" 2>/dev/null |
    grep -E '^ *[0-9,]+ \([ 0-9.]+%\)' | head -15 || true

OUT=${COUNT_OUT:-$ROOT/bench/results/$(date -u +%Y%m%d-%H%M%S)-$COMMIT-count.json}
mkdir -p "$(dirname "$OUT")"
/usr/bin/python3 - "$RAW" "$OUT" "$COMMIT" "$DIRTY" <<'EOF'
import json, platform, sys, time
raw, out, commit, dirty = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "true"
scenarios = []
for line in open(raw):
    name, app, args, ir_b, n_b, ir_f, n_f, errors = line.rstrip("\n").split("|")
    ir_b, n_b, ir_f, n_f, errors = (int(x) for x in (ir_b, n_b, ir_f, n_f, errors))
    scenarios.append({"name": name, "app": f"bench/apps/{app}.lua", "args": args,
                      "runs": [{"messages": n_b, "ir": ir_b}, {"messages": n_f, "ir": ir_f}],
                      "ir_per_msg_total": round(ir_f / n_f, 1),
                      "ir_per_msg_marginal": round((ir_f - ir_b) / (n_f - n_b), 1),
                      "errors": errors})
first = scenarios[0]
doc = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit, "dirty": dirty,
       "kernel": platform.release(), "tool": "valgrind --tool=callgrind",
       # the first scenario's figures at the top, as before there were several
       "scenario": {"app": first["app"], "args": first["args"]},
       "runs": first["runs"], "ir_per_msg_total": first["ir_per_msg_total"],
       "ir_per_msg_marginal": first["ir_per_msg_marginal"], "errors": first["errors"],
       "scenarios": scenarios}
json.dump(doc, open(out, "w"), indent=1)
print()
print("instructions per message (marginal: the difference of the two runs / their messages):")
for s in scenarios:
    print(f"  {s['name']:16} {s['ir_per_msg_marginal']:10.0f}   (total Ir / messages: {s['ir_per_msg_total']:.0f})"
          + (f"   ERRORS: {s['errors']}" if s["errors"] else ""))
print(f"results: {out}")
EOF
