-- Unbounded Lua recursion in a handler.
-- expect: serve handler_error
local function f(n) return f(n + 1) + 1 end
return {message = function() f(1) end}
