-- A table key whose __tostring raises.
-- expect: refuse unknown app field 'table'
return {[setmetatable({}, {__tostring = function() error("tostring") end})] = true}
