-- Conformance app: echo under small limits (max_message_size comes from the scenario's flags).
return {
  message = function(conn, data, kind)
    conn:send("got " .. #data .. " " .. kind)
  end,
  close = function(conn, code, reason)
    ws.broadcast(string.format("closed %d %d %s", conn.id, code, reason))
  end,
}
