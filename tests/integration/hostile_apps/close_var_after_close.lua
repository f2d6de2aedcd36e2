-- __close uses the connection after the handler closed it.
-- expect: serve
return {message = function(conn, data)
  local guard <close> = setmetatable({}, {__close = function()
    assert(conn:send("after") == nil)
    conn:close(4000)
    conn:subscribe("t")
  end})
  conn:close(1000, "bye")
end}
