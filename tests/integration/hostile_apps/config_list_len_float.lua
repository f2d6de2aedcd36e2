-- A protocols list whose __len is not an integer.
-- expect: refuse object length is not an integer
return {config = {protocols = setmetatable({}, {__len = function() return 0.5 end})}}
