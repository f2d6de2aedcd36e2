# Sourced by the bench scripts (run.sh, count.sh, scale.sh, chat_load.sh); expects ROOT, TMP and
# WSSERVER to be set.

# A port below the ephemeral range (wsbench's own client sockets live there) that no socket uses
# in any state.
free_port() {
    local p lo
    lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % (lo > 21000 ? lo - 20000 : 1000)))
        if [[ -z $(ss -Htan "sport = :$p" 2>/dev/null) ]]; then
            echo "$p"
            return
        fi
    done
    echo "$(basename "$0"): no free port found" >&2
    return 1
}

# A snapshot of the server binary in $TMP/bin (other work may rebuild build/wsserver during a
# run), finding the shipped Lua library through WSSERVER_LUA_PATH; COMMIT and DIRTY say what it
# was built from (read now: others may commit meanwhile).
snapshot_server() {
    mkdir -p "$TMP/bin"
    cp "$WSSERVER" "$TMP/bin/wsserver"
    COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    DIRTY=$([[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] &&
        echo true || echo false)
    export WSSERVER_LUA_PATH="$ROOT/lua/?.lua;$ROOT/lua/?/init.lua"
}

# For scripts with one server at a time (its pid in SPID): kills it and removes $TMP at exit.
cleanup_single_server() {
    if [[ -n ${SPID:-} ]] && kill -0 "$SPID" 2>/dev/null; then
        kill -KILL "$SPID" 2>/dev/null || true
    fi
    rm -rf "$TMP"
}
