-- Conformance app, version 2 of a reload: the v1 global is gone, ws.state and conn.data stay.
ws.state.loads = (ws.state.loads or 0) + 1

return {
  load = function(state, info)
    state.info = string.format("v2 generation=%d previous=%d trigger=%s", info.generation,
                               info.previous, info.trigger)
  end,

  message = function(conn, data)
    conn.data.seen = (conn.data.seen or 0) + 1
    conn:send(string.format("v2 %s global=%s loads=%d seen=%d info=%s gen=%d", data,
                            tostring(counter), ws.state.loads, conn.data.seen, ws.state.info,
                            ws.stats().generation))
  end,
}
