-- Benchmark app for the cost of one wait: every message waits once (ws.sleep(0): a zero timer on
-- the loop, the handler's coroutine yields and resumes) and then goes back like echo.lua's.
return {
  config = { log_level = "warn" },

  message = function(conn, data, kind)
    ws.sleep(0)
    conn:send(data, kind)
  end,
}
