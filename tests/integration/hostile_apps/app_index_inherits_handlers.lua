-- Handlers inherited through __index from a base table work.
-- expect: serve
local base = {message = function(conn, data, kind) conn:send(data, kind) end}
return setmetatable({}, {__index = base})
