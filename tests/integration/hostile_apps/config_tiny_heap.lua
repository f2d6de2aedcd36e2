-- A heap cap the state already exceeds: every handler runs out of memory.
-- expect: serve not enough memory
return {
  config = {lua_memory_limit = 1048576},
  open = function(conn) local t = {} for i = 1, 1e6 do t[i] = {} end end,
  message = function(conn, data) conn:send(string.rep(data, 100000)) end,
}
