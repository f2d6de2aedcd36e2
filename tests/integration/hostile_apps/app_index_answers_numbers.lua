-- The returned table's __index answers 42 for every key.
-- expect: refuse app.config must be a table, got number
return setmetatable({}, {__index = function() return 42 end})
