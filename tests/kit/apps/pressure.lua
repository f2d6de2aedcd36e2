-- Conformance app: what conn:send answers as the queue grows within one handler (the server
-- writes once per loop iteration), drain after "queued", and the slow-consumer close. Results go
-- to ws.state and are read back by "report".
return {
  message = function(conn, data)
    local n, size = data:match("^send (%d+) (%d+)$")
    if n then
      local results = {}
      for i = 1, tonumber(n) do
        local r, err = conn:send(string.rep("x", tonumber(size)))
        results[#results + 1] = tostring(r or err)
      end
      ws.state.results = table.concat(results, ",")
      ws.state.buffered = conn:buffered()
    elseif data == "report" then
      conn:send(string.format("results %s buffered %s", ws.state.results, ws.state.buffered))
    end
  end,

  drain = function(conn)
    conn:send("drained")
  end,

  close = function(conn, code, reason)
    ws.broadcast(string.format("closed %d %d %s", conn.id, code, reason))
  end,
}
