-- Conformance app: ws.after and ws.every on the server's clock; handles cancel.
local every

return {
  message = function(conn, data)
    if data == "after" then
      ws.after(0.2, function()
        conn:send("after fired")
      end)
      conn:send("after armed")
    elseif data == "every" then
      local n = 0
      every = ws.every(0.25, function()
        n = n + 1
        conn:send("tick " .. n)
        if n == 3 then
          conn:send("cancel " .. tostring(every:cancel()) .. " " .. tostring(every:cancel()))
        end
      end)
      conn:send("every armed")
    elseif data == "cancelled" then
      local t = ws.after(0.1, function()
        conn:send("should not fire")
      end)
      conn:send("cancel " .. tostring(t:cancel()))
    elseif data == "error" then
      ws.after(0.1, function()
        conn:send("timer about to fail")
        error("timer failed")
      end)
      conn:send("error armed")
    end
  end,
}
