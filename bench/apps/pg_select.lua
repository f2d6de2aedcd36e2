-- Benchmark app: one PostgreSQL SELECT by primary key per message (ws.pg, a pool of 16), then the
-- message goes back to its sender like the echo app. BENCH_PG is the conninfo (BENCH_PG_POOL the
-- pool size); bench/pg_load.sh makes the table bench_kv (id int PRIMARY KEY, v text) with rows
-- 1..1000.
local db = assert(ws.pg.connect(assert(os.getenv("BENCH_PG"), "BENCH_PG is not set"),
  {pool = tonumber(os.getenv("BENCH_PG_POOL")) or 16}))
local n = 0

return {
  config = { log_level = "warn" },

  message = function(conn, data, kind)
    n = n % 1000 + 1
    local rows, err = db:query("SELECT v FROM bench_kv WHERE id = $1", n)
    if not rows then
      if err == "closed" or err == "shutdown" then
        return -- wsbench hung up while this message waited its turn
      end
      error("bench_kv " .. n .. ": " .. tostring(err))
    end
    assert(#rows == 1, "bench_kv: a row is missing")
    conn:send(data, kind)
  end,
}
