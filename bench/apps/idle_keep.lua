-- Benchmark app for idle memory with the Lua side of a connection: open makes the connection's
-- Lua object (it reads conn.id) and keeps it in a table by id, close drops it. Messages echo,
-- as in echo.lua.
local conns = {}

return {
  config = { log_level = "warn" },

  open = function(conn)
    conns[conn.id] = conn
  end,

  close = function(conn)
    conns[conn.id] = nil
  end,

  message = function(conn, data, kind)
    conn:send(data, kind)
  end,
}
