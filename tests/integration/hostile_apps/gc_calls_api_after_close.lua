-- Finalizers that use a closed conn, ws and timers, also at exit.
-- expect: serve
local keep = {}
return {
  open = function(conn)
    keep[#keep + 1] = setmetatable({}, {__gc = function()
      conn:send("late")
      ws.broadcast("from a finalizer")
      ws.after(0, function() end)
    end})
  end,
  close = function(conn)
    for i = 1, #keep do keep[i] = nil end
    collectgarbage()
  end,
  message = function(conn, data) conn:send(data) end,
}
