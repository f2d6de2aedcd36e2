-- The returned table's __index never returns: the handler budget stops it.
-- expect: refuse handler_timeout
return setmetatable({}, {__index = function() while true do end end})
