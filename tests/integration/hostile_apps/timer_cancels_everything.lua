-- A repeating timer that cancels itself twice and starts a thousand more.
-- expect: serve
local started = false
return {
  load = function()
    local t
    t = ws.every(0.01, function()
      t:cancel() t:cancel()
      if not started then
        started = true
        for i = 1, 1000 do ws.after(0, function() end):cancel() end
      end
    end)
  end,
}
