-- A reload that does not compile: the running version stays.
return {
  message = function(conn, data)
    conn:send("never" .. )
  end,
}
