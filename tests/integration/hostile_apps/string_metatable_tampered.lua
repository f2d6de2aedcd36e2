-- The app makes every string method raise.
-- expect: serve handler_error
getmetatable("").__index = function(_, k) error("string method " .. tostring(k)) end
return {message = function(conn, data) conn:send(data:upper()) end}
