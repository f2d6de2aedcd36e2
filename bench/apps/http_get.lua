-- Benchmark app for a handler that calls a backend: every message makes one HTTP GET to the
-- upstream at BENCH_UPSTREAM (bench/node/upstream.js, started by bench/run.sh) and, once the
-- answer is in, goes back like echo.lua's. A failed call answers a text wsbench counts as wrong.
local url = assert(os.getenv("BENCH_UPSTREAM"), "BENCH_UPSTREAM is not set")

return {
  config = { log_level = "warn" },

  message = function(conn, data, kind)
    local res, err = ws.http.get(url)
    if not res or res.status ~= 200 then
      conn:send("upstream failed: " .. tostring(err or res.status))
      return
    end
    conn:send(data, kind)
  end,
}
