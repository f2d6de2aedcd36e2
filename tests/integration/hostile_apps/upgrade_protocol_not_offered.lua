-- upgrade picks a subprotocol the client never offered.
-- expect: serve
return {
  upgrade = function(req) return {protocol = "never-offered", data = 5} end,
  message = function(conn, data) conn:send(data) end,
}
