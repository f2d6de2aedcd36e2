-- A reload with a misspelt field: refused, the running version stays.
ws.state.loads = (ws.state.loads or 0) + 1
return {
  mesage = function(conn, data)
    conn:send("never")
  end,
}
