-- A handler fills the heap up to the cap; the next handlers still run.
-- expect: serve not enough memory
local hoard = {}
return {
  config = {lua_memory_limit = 32 * 1024 * 1024, handler_timeout = 5},
  open = function(conn)
    for i = 1, 1e9 do hoard[i] = string.rep("y", 100000) .. i end
  end,
  close = function() hoard = {} collectgarbage() end,
}
