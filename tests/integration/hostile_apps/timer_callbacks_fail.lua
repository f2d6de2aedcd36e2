-- Timers started by load() whose callbacks raise, every 10 ms.
-- expect: serve timer failed
return {
  load = function()
    ws.every(0.01, function() error("timer failed") end)
    ws.after(0, function() error(setmetatable({}, {__tostring = function() return {} end})) end)
  end,
}
