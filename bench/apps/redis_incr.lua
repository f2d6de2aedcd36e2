-- Benchmark app: one Redis INCR per message, then the echo. Against the plain echo of the same
-- run it shows what a handler that waits for Redis costs (the round trip, the pool, the yield
-- and resume). The Redis is $BENCH_REDIS_URL (bench/run.sh starts one).
local r = assert(ws.redis.connect(os.getenv("BENCH_REDIS_URL") or "redis://127.0.0.1:6379"))

return {
  config = { log_level = "warn" },

  message = function(conn, data, kind)
    local n, err = r:call("INCR", "bench:messages")
    if not n then
      ws.log.warn("bench_redis_failed", { error = err })
    end
    conn:send(data, kind)
  end,
}
