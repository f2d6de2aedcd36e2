-- The returned table's __index raises on every key the core reads.
-- expect: refuse reading app.config failed
return setmetatable({message = function() end}, {__index = function() error("x") end})
