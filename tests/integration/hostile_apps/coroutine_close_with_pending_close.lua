-- coroutine.close on a coroutine whose pending __close raises.
-- expect: serve
return {message = function(conn, data)
  local co = coroutine.create(function()
    local x <close> = setmetatable({}, {__close = function() error("pending close") end})
    coroutine.yield()
  end)
  coroutine.resume(co)
  local ok, err = coroutine.close(co)
  conn:send(tostring(ok) .. " " .. tostring(err))
end}
