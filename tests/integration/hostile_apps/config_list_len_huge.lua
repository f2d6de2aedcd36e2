-- A protocols list whose __len claims 2^40 items.
-- expect: refuse invalid value for protocols: a list of strings
return {config = {protocols = setmetatable({}, {__len = function() return 1 << 40 end})}}
