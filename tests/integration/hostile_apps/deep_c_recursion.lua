-- Recursion through C (string.gsub callbacks) in a handler.
-- expect: serve handler_error
local function f(s) return (s:gsub(".", f)) end
return {message = function(conn, data) f(data) end}
