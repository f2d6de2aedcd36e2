-- upgrade accepts with a table whose __index raises.
-- expect: serve upgrade reply exploded
return {
  upgrade = function(req)
    return setmetatable({}, {__index = function() error("upgrade reply exploded") end})
  end,
}
