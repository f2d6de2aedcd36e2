-- Finalizers that raise, collected during handlers.
-- expect: serve lua_warning
return {
  message = function(conn, data)
    for i = 1, 100 do setmetatable({}, {__gc = function() error("gc " .. i) end}) end
    collectgarbage()
    conn:send(data)
  end,
}
