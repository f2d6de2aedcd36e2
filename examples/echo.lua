-- Echo: every message goes back to its sender, text as text and binary as binary.
return {
  message = function(conn, data, kind)
    conn:send(data, kind)
  end,
}
