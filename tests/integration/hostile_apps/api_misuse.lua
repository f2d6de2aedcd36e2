-- Every conn and ws method called with the wrong arguments.
-- expect: serve
return {message = function(conn, data)
  local calls = {
    function() conn:send({}) end, function() conn:send("x", "nope") end,
    function() conn:send("\xff\xfe") end, function() conn:close(1005) end,
    function() conn:close(1000, string.rep("r", 200)) end, function() conn:ping(string.rep("p", 200)) end,
    function() conn.send(5) end, function() conn:subscribe({}) end, function() ws.get("x") end,
    function() ws.get(-1) end, function() ws.publish() end, function() ws.log.info({}) end,
    function() ws.log.info("m", {k = setmetatable({}, {__tostring = error})}) end,
    function() ws.x = 1 end, function() rawset(ws, "x", 1) end, function() setmetatable(ws, {}) end,
    function() ws.json.decode("{") end, function() ws.json.decode(string.rep("[", 100000)) end,
  }
  local failed = 0
  for _, f in ipairs(calls) do if not pcall(f) then failed = failed + 1 end end
  conn:send("failed " .. failed)
end}
