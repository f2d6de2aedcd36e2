-- The chunk makes its own environment raise on every global read.
-- expect: serve handler_error
local app = {message = function(conn, data) conn:send(missing_global .. data) end}
setmetatable(_ENV, {__index = function(_, k) error("no global " .. tostring(k)) end})
return app
