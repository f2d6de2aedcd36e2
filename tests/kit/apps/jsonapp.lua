-- Conformance app: ws.json round trips and replies with send_json.
local json = ws.json

return {
  message = function(conn, data)
    local v, err = json.decode(data)
    if v == nil then
      conn:send_json({error = "bad json", detail = err})
      return
    end
    if type(v) ~= "table" then
      conn:send_json({scalar = v})
      return
    end
    if v.cmd == "null" then
      conn:send_json({value = json.null, list = {1, json.null, 3}, is_null = v.x == json.null})
    elseif v.cmd == "empty" then
      conn:send_json({array = json.array(), object = {}, nested = {json.array({})}})
    elseif v.cmd == "function" then
      local ok, e = pcall(conn.send_json, conn, {f = function() end})
      conn:send_json({ok = ok, error = e})
    elseif v.cmd == "raw" then
      conn:send(json.encode(v.value))
    elseif v.cmd == "unicode" then
      conn:send_json({text = "h\u{e9}llo \u{1F600}", len = utf8.len("h\u{e9}llo \u{1F600}")})
    else
      conn:send_json({got = v, keys = #v, echo = true})
    end
  end,
}
