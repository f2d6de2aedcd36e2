#!/usr/bin/env bash
# Postgres load: `wsbench echo` (PG_ARGS: 100 connections, 32-byte messages, 16 in flight each)
# against bench/apps/pg_select.lua, which runs one SELECT by primary key per message on a
# throwaway cluster (tests/integration/pgcluster.py: initdb/pg_ctl in a temporary folder, a Unix
# socket, removed at the end), and against the plain echo app with the same arguments, the two
# alternating PG_RUNS times (3). Prints one JSON object per wsbench run on stdout, each with
# "app": "echo" or "pg_select"; exit status 3 when a server died. bench/run.sh runs it once.
#
# Environment: WSSERVER, WSBENCH (binaries; default build/), PG_RUNS, PG_DURATION (3 s),
# PG_WARMUP (1 s), PG_ARGS, BENCH_SERVER_CPU (0), BENCH_CLIENT_CPU (1), BENCH_NICE.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WSSERVER=${WSSERVER:-$ROOT/build/wsserver}
WSBENCH=${WSBENCH:-$ROOT/build/wsbench}
RUNS=${PG_RUNS:-3}
DURATION=${PG_DURATION:-3}
WARMUP=${PG_WARMUP:-1}
read -r -a ARGS <<<"${PG_ARGS:--c 100 -s 32 -d 16}"
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
NICE=()
[[ -n ${BENCH_NICE:-} ]] && NICE=(nice -n "$BENCH_NICE")
PY=/usr/bin/python3

for f in "$WSSERVER" "$WSBENCH"; do
    [[ -x $f ]] || { echo "pg_load.sh: $f is missing (make build/wsbench; make)" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/wspg.XXXXXX)
SPID=
PGPID=
cleanup() {
    if [[ -n $SPID ]] && kill -0 "$SPID" 2>/dev/null; then kill -KILL "$SPID" 2>/dev/null || true; fi
    if [[ -n $PGPID ]]; then
        exec 7>&- # pgcluster.py removes its cluster when its stdin closes
        for _ in $(seq 100); do kill -0 "$PGPID" 2>/dev/null || break; sleep 0.1; done
        kill -TERM "$PGPID" 2>/dev/null || true
        wait "$PGPID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
trap cleanup EXIT
trap 'exit 130' INT TERM
export WSSERVER_LUA_PATH=${WSSERVER_LUA_PATH:-"$ROOT/lua/?.lua;$ROOT/lua/?/init.lua"}

mkfifo "$TMP/pg.in"
(cd "$ROOT/tests/integration" && exec "$PY" pgcluster.py) <"$TMP/pg.in" >"$TMP/pg.out" 2>"$TMP/pg.err" &
PGPID=$!
exec 7>"$TMP/pg.in"
for _ in $(seq 600); do
    [[ -s $TMP/pg.out ]] && break
    kill -0 "$PGPID" 2>/dev/null || break
    sleep 0.1
done
CONNINFO=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["conninfo"])' "$TMP/pg.out" 2>/dev/null) || {
    echo "pg_load.sh: no PostgreSQL cluster:" >&2
    tail -5 "$TMP/pg.err" >&2
    exit 2
}
psql -X -q -v ON_ERROR_STOP=1 "$CONNINFO" -c "CREATE TABLE bench_kv (id int PRIMARY KEY, v text);
    INSERT INTO bench_kv SELECT g, md5(g::text) FROM generate_series(1, 1000) g; ANALYZE bench_kv" >&2

# one_run APP: a fresh server on APP, one wsbench run, its JSON with "app" added.
one_run() {
    local app=$1 port rc=0 out
    port=$(free_port)
    BENCH_PG=$CONNINFO "${NICE[@]}" taskset -c "$SERVER_CPU" "$WSSERVER" -l "127.0.0.1:$port" \
        --log-level warn "$ROOT/bench/apps/$app.lua" >>"$TMP/server.log" 2>&1 &
    SPID=$!
    for _ in $(seq 100); do
        ss -Hltnp "sport = :$port" 2>/dev/null | grep -q "pid=$SPID," && break
        kill -0 "$SPID" 2>/dev/null || break
        sleep 0.05
    done
    out=$("${NICE[@]}" taskset -c "$CLIENT_CPU" timeout 120 "$WSBENCH" echo -p "$port" \
        -t "$DURATION" -w "$WARMUP" "${ARGS[@]}" --server-pid "$SPID" --label "wsserver $app") || rc=$?
    if ! kill -0 "$SPID" 2>/dev/null; then
        echo "pg_load.sh: THE SERVER DIED ($app); log:" >&2
        tail -20 "$TMP/server.log" >&2
        exit 3
    fi
    kill -TERM "$SPID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$SPID" 2>/dev/null || break; sleep 0.05; done
    kill -KILL "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
    SPID=
    [[ -n $out ]] || { echo "pg_load.sh: wsbench failed on $app (exit $rc)" >&2; return 0; }
    "$PY" -c 'import json,sys; r=json.loads(sys.argv[1]); r["app"]=sys.argv[2]; print(json.dumps(r))' \
        "$out" "$app"
}

for _ in $(seq "$RUNS"); do
    one_run echo
    one_run pg_select
done
if grep -q 'level=error' "$TMP/server.log"; then
    echo "pg_load.sh: server errors:" >&2
    grep 'level=error' "$TMP/server.log" | head -5 >&2
fi
