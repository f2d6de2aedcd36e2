-- Conformance app, version 1 of a reload: a global, ws.state, a timer of this version.
counter = (counter or 0) + 1 -- a global: gone in the next version's fresh environment
ws.state.loads = (ws.state.loads or 0) + 1

return {
  load = function(state, info)
    state.info = string.format("v1 generation=%d previous=%d trigger=%s", info.generation,
                               info.previous, info.trigger)
  end,

  message = function(conn, data)
    if data == "tick" then
      ws.every(1.0, function()
        conn:send("v1 tick")
      end)
      conn:send("v1 ticking")
    else
      conn.data.seen = (conn.data.seen or 0) + 1
      conn:send(string.format("v1 %s global=%s loads=%d seen=%d info=%s", data, tostring(counter),
                              ws.state.loads, conn.data.seen, ws.state.info))
    end
  end,
}
