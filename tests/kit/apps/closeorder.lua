-- Conformance app: what close(conn, code, reason) sees. Clients on /watch subscribe to
-- "watchers" and get one JSON report per close; the others subscribe to the topics in their
-- query (?topics=a,b, kept by upgrade in conn.data). "kick" closes from the server side,
-- "stale" uses a handle kept in ws.state after that connection is gone.
local json = ws.json

return {
  upgrade = function(req)
    return {data = {topics = req.query.topics}}
  end,

  open = function(conn)
    if conn.path == "/watch" then
      conn:subscribe("watchers")
      return
    end
    for t in (conn.data.topics or ""):gmatch("[^,]+") do
      conn:subscribe(t)
    end
    conn.data.joined = conn.id
    ws.state.last = conn
  end,

  message = function(conn, data)
    if data == "kick" then
      local ok = conn:close(4001, "kicked")
      local r1, r2 = conn:send("after kick")
      conn:send(tostring(r1) .. " " .. tostring(r2)) -- never arrives
      ws.publish("watchers", json.encode({type = "kicked", ok = ok, send = r2,
                                          open = conn:is_open(), count = ws.count(),
                                          get = ws.get(conn.id) ~= nil}))
    elseif data == "stale" then
      local old = ws.state.kept
      local r1, r2 = old:send("hello?")
      local s1, s2 = old:subscribe("x")
      conn:send_json({send = {r1 == nil and json.null or r1, r2}, sub = {s1 == nil and json.null or s1, s2},
                      id = old.id, data = old.data.joined, open = old:is_open(),
                      text = tostring(old), topics = json.array(old:topics()),
                      peer = old.peer == nil, buffered = old:buffered()})
    elseif data == "keep" then
      ws.state.kept = conn
      conn:send("kept")
    end
  end,

  close = function(conn, code, reason)
    if conn.path == "/watch" then
      return
    end
    local r1, r2 = conn:send("too late")
    local u1, u2 = conn:unsubscribe("a")
    ws.publish("watchers", json.encode({
      type = "close", id = conn.id, code = code, reason = reason,
      topics = json.array(conn:topics()), data = conn.data.joined, open = conn:is_open(),
      send = {r1 == nil and json.null or r1, r2}, unsub = {u1 == nil and json.null or u1, u2},
      count = ws.count(), get = ws.get(conn.id) ~= nil, subscribers_a = ws.subscribers("a"),
      text = tostring(conn), path = conn.path,
    }))
  end,
}
