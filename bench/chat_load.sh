#!/usr/bin/env bash
# Chat load: CHAT_CLIENTS clients of examples/chat (2000) in CHAT_ROOMS rooms (50, so 40 per room),
# each saying CHAT_RATE messages per second (1) for CHAT_DURATION seconds (10) after CHAT_WARMUP
# (1), driven by `wsbench chat`. The server runs a copy of examples/chat/chat.lua made here with
# one change: the rate limit (10 messages per 5 s per connection) raised to 1,000,000. wsbench
# checks that every member of a room gets every message of its room exactly once and in each
# sender's order, and nothing from another room, and measures send -> delivery latency (the send
# time travels in the text). Clients join 16 at a time (CHAT_JOIN_WINDOW): each join makes the
# chat broadcast the room list to every connection (see docs/performance.md, "Anomalies").
#
# Prints wsbench's JSON object on stdout and its summary on stderr; exit status: wsbench's, or 3
# when the server died. bench/run.sh runs it once per `make bench`.
#
# Environment: WSSERVER, WSBENCH (binaries; default build/), CHAT_CLIENTS, CHAT_ROOMS, CHAT_RATE,
# CHAT_DURATION, CHAT_WARMUP, CHAT_JOIN_WINDOW, CHAT_SIZE (bytes of each "say" message, 128),
# BENCH_SERVER_CPU (0), BENCH_CLIENT_CPU (1), BENCH_NICE, CHAT_LABEL.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSSERVER=${WSSERVER:-$ROOT/build/wsserver}
WSBENCH=${WSBENCH:-$ROOT/build/wsbench}
CLIENTS=${CHAT_CLIENTS:-2000}
ROOMS=${CHAT_ROOMS:-50}
RATE=${CHAT_RATE:-1}
DURATION=${CHAT_DURATION:-10}
WARMUP=${CHAT_WARMUP:-1}
JOIN_WINDOW=${CHAT_JOIN_WINDOW:-16}
SIZE=${CHAT_SIZE:-128}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
NICE=()
[[ -n ${BENCH_NICE:-} ]] && NICE=(nice -n "$BENCH_NICE")

for f in "$WSSERVER" "$WSBENCH"; do
    [[ -x $f ]] || { echo "chat_load.sh: $f is missing (make build/wsbench; make)" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/wschat.XXXXXX)
SPID=
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap cleanup_single_server EXIT
trap 'exit 130' INT TERM

# The bench copy of the chat: only the burst of the token bucket changes.
sed -e 's/^\(  burst = \)10,\( *\)--.*/\11000000,\2-- bench copy (bench\/chat_load.sh): limit raised/' \
    "$ROOT/examples/chat/chat.lua" >"$TMP/chat.lua"
if ! grep -q 'burst = 1000000,' "$TMP/chat.lua"; then
    echo "chat_load.sh: examples/chat/chat.lua no longer has 'burst = 10,': update the sed" >&2
    exit 2
fi
export WSSERVER_LUA_PATH=${WSSERVER_LUA_PATH:-"$ROOT/lua/?.lua;$ROOT/lua/?/init.lua"}
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PORT=$(free_port)
"${NICE[@]}" taskset -c "$SERVER_CPU" "$WSSERVER" -l "127.0.0.1:$PORT" --max-connections 20000 \
    --log-level warn "$TMP/chat.lua" >"$TMP/server.log" 2>&1 &
SPID=$!
for _ in $(seq 100); do
    ss -Hltnp "sport = :$PORT" 2>/dev/null | grep -q "pid=$SPID," && break
    kill -0 "$SPID" 2>/dev/null || break
    sleep 0.05
done

rc=0
"${NICE[@]}" taskset -c "$CLIENT_CPU" timeout 120 "$WSBENCH" chat -p "$PORT" -c "$CLIENTS" \
    --rooms "$ROOMS" --rate "$RATE" -s "$SIZE" --join-window "$JOIN_WINDOW" -t "$DURATION" \
    -w "$WARMUP" --stall 10 --server-pid "$SPID" --label "${CHAT_LABEL:-wsserver chat}" || rc=$?

if ! kill -0 "$SPID" 2>/dev/null; then
    echo "chat_load.sh: THE SERVER DIED; log:" >&2
    tail -20 "$TMP/server.log" >&2
    exit 3
fi
# wsbench has closed its 2000 connections; each close makes the chat broadcast the room list to
# the others, so the server may take a moment. SIGTERM, then SIGKILL after 10 s.
kill -TERM "$SPID" 2>/dev/null || true
for _ in $(seq 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.1; done
kill -KILL "$SPID" 2>/dev/null && echo "chat_load.sh: server ignored SIGTERM for 10 s; killed" >&2
wait "$SPID" 2>/dev/null || true
SPID=
if grep -q 'level=error' "$TMP/server.log"; then
    echo "chat_load.sh: server errors:" >&2
    grep 'level=error' "$TMP/server.log" | head -5 >&2
fi
exit "$rc"
