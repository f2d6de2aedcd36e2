-- An unknown config key whose __tostring raises.
-- expect: refuse reading app.config failed
return {config = {[setmetatable({}, {__tostring = function() error("ts") end})] = 1}}
