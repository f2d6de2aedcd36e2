-- A reload whose load() fails: refused, the running version stays (its chunk still ran).
ws.state.loads = (ws.state.loads or 0) + 1
return {
  load = function()
    error("not today")
  end,
  message = function(conn, data)
    conn:send("never")
  end,
}
