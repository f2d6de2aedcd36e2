-- The chunk raises an error object whose __tostring raises.
-- expect: refuse running the app failed
error(setmetatable({}, {__tostring = function() error("again") end}))
