-- A broadcast filter that broadcasts, without end.
-- expect: serve handler_error
local function again(c) ws.broadcast("x", {filter = again}) return true end
return {message = function(conn, data) ws.broadcast(data, {filter = again}) end}
