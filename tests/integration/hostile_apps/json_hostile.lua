-- send_json with a cycle, deep nesting, a function and a raising __index.
-- expect: serve send_json
return {message = function(conn)
  local cycle = {} cycle.self = cycle
  local deep = {} local t = deep for i = 1, 10000 do t[1] = {} t = t[1] end
  for _, v in ipairs({cycle, deep, {print}, setmetatable({}, {__index = error})}) do
    pcall(conn.send_json, conn, v)
  end
  conn:send_json(cycle)
end}
