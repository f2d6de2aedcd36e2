-- Conformance app: a handler error closes only its connection with 1011, after app.error;
-- close() then runs with the code and reason; the others keep going. Clients on /watch hear
-- about every error and close.
local json = ws.json

local function tell(what)
  ws.publish("watchers", json.encode(what))
end

return {
  open = function(conn)
    if conn.path == "/watch" then
      conn:subscribe("watchers")
    elseif conn.path == "/bad-open" then
      error("open failed on purpose")
    end
    conn:send("hello " .. conn.id)
  end,

  message = function(conn, data)
    if data == "boom" then
      conn:send("about to fail")
      error("boom")
    elseif data == "error-object" then
      error({code = 42})
    elseif data == "close-then-fail" then
      conn:close(4002, "closing first")
      error("after close")
    elseif data == "fail-in-pcall" then
      local ok, err = pcall(error, "caught")
      conn:send("pcall: " .. tostring(ok) .. " " .. tostring(err))
    else
      conn:send("echo " .. data)
    end
  end,

  error = function(message, conn)
    -- message: "<handler> handler failed: <error>\nstack traceback:..."
    local first = message:match("^[^\n]*")
    tell({type = "error", handler = first:match("^(%a+) handler failed: "),
          where = first:gsub("^%a+ handler failed: ", ""):gsub("^.*/", ""), detail = message,
          conn = conn.id, open = conn:is_open()})
  end,

  close = function(conn, code, reason)
    if conn.path ~= "/watch" then
      tell({type = "close", conn = conn.id, code = code, reason = reason})
    end
  end,
}
