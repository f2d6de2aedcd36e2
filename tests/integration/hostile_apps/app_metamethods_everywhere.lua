-- An app table whose __pairs, __len, __tostring, __eq and __gc all raise.
-- expect: serve
local function boom() error("metamethod called") end
return setmetatable({message = function(conn, data) conn:send(data) end},
  {__pairs = boom, __len = boom, __tostring = boom, __eq = boom, __gc = boom, __name = {}})
