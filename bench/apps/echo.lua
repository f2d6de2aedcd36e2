-- Benchmark echo app: every message goes back to its sender, text as text and binary as binary.
-- Nothing else, so the measure is the server's per-message path (frames, Lua call, send).
return {
  config = { log_level = "warn" },

  message = function(conn, data, kind)
    conn:send(data, kind)
  end,
}
