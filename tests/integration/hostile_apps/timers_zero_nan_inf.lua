-- Timers at 0, NaN and infinity.
-- expect: serve seconds must be a number >= 0
return {
  open = function(conn)
    ws.after(0, function() conn:send("zero") end)
    pcall(ws.every, 0, function() end)
    pcall(ws.after, math.huge, function() end)
    ws.after(0/0, function() end)
  end,
}
