-- Removing the handler budget's hook and looping: refused, so the loop stays interruptible.
-- expect: serve debug.sethook is not available
return {
  message = function(conn)
    debug.sethook()
    while true do end
  end,
  open = function(conn)
    local ok, err = pcall(debug.sethook)
    ws.log.warn("sethook", { ok = ok, err = err })
  end,
}
