-- A handler yields at top level.
-- expect: serve attempt to yield
return {message = function(conn, data) coroutine.yield(data) end}
