-- Conformance app: the upgrade hook refuses with statuses and bodies, picks subprotocols and
-- passes data to the connection; open reports what the request looked like.
local json = ws.json

return {
  config = {protocols = {"chat.v2", "chat.v1"}},

  upgrade = function(req)
    local q = req.query
    if q.refuse == "plain" then
      return false
    elseif q.refuse == "status" then
      return false, 451, "unavailable for legal reasons"
    elseif q.refuse == "bad-status" then
      return false, 200, "two hundred"
    elseif q.refuse == "float-status" then
      return false, 401.0, "float"
    elseif q.refuse == "number-body" then
      return false, 429, 42
    elseif q.refuse == "error" then
      error("upgrade blew up")
    elseif q.protocol then
      return {protocol = q.protocol, data = {via = "upgrade"}}
    end
    return {data = {path = req.path, query = req.query, cookies = req.cookies,
                    origin = req.origin or json.null, protocols = json.array(req.protocols),
                    method = req.method, header_x = req.headers["x-custom"] or json.null,
                    target = req.target}}
  end,

  open = function(conn)
    conn:send_json({id = conn.id, path = conn.path, protocol = conn.protocol or json.null,
                    data = conn.data})
  end,
}
