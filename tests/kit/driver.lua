-- Runs one conformance scenario (tests/kit/scenarios/*.json) in the ws.testing kit and prints
-- its transcript as JSON: for every step, what each client received during it and the step's
-- result (connect, http, reload). tests/integration/test_kit_conformance.py runs the same
-- scenario against build/wsserver and compares the transcripts.
--
--   LUA_CPATH="build/lua/?.so;;" lua5.4 tests/kit/driver.lua SCENARIO.json [APP.lua]
--   local run = loadfile("tests/kit/driver.lua")("--module"); run(SCENARIO.json [, APP.lua])
--
-- The kit is the real server in-process (ws.kitcore: in-memory connections, the simulated
-- clock), so the scenarios prove those two against the server on sockets.
--
-- APP.lua (default: the scenario's "app") is the file the kit loads; the conformance test passes
-- a copy so the server and the kit load the same path (error messages name it). A "reload" step
-- copies its file over APP.lua first, like an edit on disk before SIGHUP.
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local root = here .. "/../.."
package.path = root .. "/lua/?.lua;" .. package.path

local testing = require "ws.testing"
local json = require "ws.json"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

local function hex(s)
  return (s:gsub(".", function(c)
    return string.format("%02x", c:byte())
  end))
end

local function unhex(s)
  return (s:gsub("%x%x", function(h)
    return string.char(tonumber(h, 16))
  end))
end

local array = json.array

local function entry(e)
  if e.kind == "close" then
    return {kind = "close", code = e.code, reason = e.reason}
  elseif e.kind == "binary" then
    return {kind = "binary", hex = hex(e.data)}
  end
  return {kind = "text", data = e.data}
end

-- The transcript of one scenario: {steps =, errors =}.
local function run(scenario_path, app_path)
  local scenario = assert(json.decode(read(scenario_path)))
  local scratch
  if not app_path then
    -- work on a copy: reload steps overwrite the app file
    scratch = os.tmpname()
    app_path = scratch .. ".lua"
    write(app_path, read(root .. "/" .. scenario.app))
  end

  local t = testing.load(app_path, {config = scenario.cli, now = 1700000000})
  local clients = {}
  local out = array()

  for i, step in ipairs(scenario.steps) do
    local rec = {index = i, received = {}}
    if step.connect then
      rec.op = "connect " .. step.connect
      local c, status, body = t:connect({
        path = step.path,
        headers = step.headers,
        cookies = step.cookies,
        protocols = step.protocols,
        origin = step.origin,
      })
      if c then
        clients[step.connect] = c
        rec.result = {status = 101, protocol = c.protocol or json.null}
      else
        rec.result = {status = status, body = body}
      end
    elseif step.send then
      rec.op = "send " .. step.send
      local c = clients[step.send]
      if step.text then
        c:send(step.text)
      elseif step.text_hex then
        c:send(unhex(step.text_hex))
      else
        c:send_binary(unhex(step.binary_hex))
      end
    elseif step.close then
      rec.op = "close " .. step.close
      clients[step.close]:close(step.code, step.reason)
    elseif step.drop then
      rec.op = "drop " .. step.drop
      clients[step.drop]:drop()
    elseif step.wait then
      rec.op = "wait " .. step.wait
      t:advance(step.wait)
    elseif step.http then
      rec.op = "http " .. step.http .. " " .. step.path
      local status, body, headers = t:http(step.http, step.path, step.headers)
      rec.result = {status = status, body = body, content_type = headers["content-type"]}
      for k, v in pairs(headers) do
        if k ~= "content-type" then
          rec.result[k] = v
        end
      end
    elseif step.reload then
      rec.op = "reload " .. step.reload
      write(app_path, read(root .. "/" .. step.reload))
      local ok, err = t:reload()
      rec.result = {ok = ok}
      rec.error = err
    else
      error("unknown step " .. i .. " in " .. scenario_path)
    end
    for name, c in pairs(clients) do
      local list = array()
      for _, e in ipairs(c:received()) do
        list[#list + 1] = entry(e)
      end
      rec.received[name] = list
    end
    out[#out + 1] = rec
  end

  local errors = array()
  for _, e in ipairs(t:errors()) do
    errors[#errors + 1] = {handler = e.handler, message = e.message}
  end
  t:close()
  if scratch then
    os.remove(app_path)
    os.remove(scratch)
  end
  return {steps = out, errors = errors}
end

-- loadfile(driver)("--module") gives run to a spec in the same process
if ... == "--module" then
  return run
end
io.write(json.encode(run(...)), "\n")
