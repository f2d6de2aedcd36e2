-- An unknown config key whose __tostring returns a table.
-- expect: refuse __tostring
return {config = {[setmetatable({}, {__tostring = function() return {} end})] = 1}}
