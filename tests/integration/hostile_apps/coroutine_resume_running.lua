-- A coroutine resumes itself and the main thread.
-- expect: serve
return {message = function(conn, data)
  local co
  co = coroutine.create(function() return coroutine.resume(co) end)
  conn:send(tostring(select(2, coroutine.resume(co))))
  conn:send(tostring(select(2, coroutine.resume(coroutine.running()))))
end}
