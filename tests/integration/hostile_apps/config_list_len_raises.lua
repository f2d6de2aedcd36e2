-- A protocols list whose __len raises.
-- expect: refuse reading app.config failed
return {config = {protocols = setmetatable({}, {__len = function() error("len") end})}}
