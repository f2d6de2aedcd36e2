-- Conformance app: conn.data persists across messages of one connection, per connection;
-- ws.get(id) returns the same conn with the same data.
return {
  open = function(conn)
    conn.data.count = 0
  end,

  message = function(conn, data)
    local d = conn.data
    if data == "reset" then
      conn.data = {count = 100}
      conn:send("reset")
      return
    elseif data:match("^peek ") then
      local other = ws.get(tonumber(data:match("%d+")))
      conn:send(other and ("peek " .. other.id .. " count " .. tostring(other.data.count))
                or "peek none")
      return
    end
    d.count = d.count + 1
    d.last = data
    conn:send(string.format("%d:%s same=%s", d.count, d.last,
                            tostring(ws.get(conn.id) == conn and ws.get(conn.id).data == d)))
  end,
}
