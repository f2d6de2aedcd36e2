-- Runs the Autobahn|Testsuite fuzzingserver's cases against ws.connect: asks the fuzzingserver
-- for its case count, connects once per case and echoes every message back until the server
-- closes, then asks it to write its reports and shuts the server down.
--
--   wstest -m fuzzingserver -s fuzzingserver.json      # {"url": "ws://127.0.0.1:9001", "cases": ["*"]}
--   AUTOBAHN=ws://127.0.0.1:9001 build/wsserver -l 127.0.0.1:9002 scripts/autobahn-client.lua
--
-- Then open reports/clients/index.html. COMPRESSION=off leaves permessage-deflate unoffered
-- (the 12.x and 13.x cases then report "unimplemented").

local BASE = os.getenv("AUTOBAHN") or "ws://127.0.0.1:9001"
local AGENT = os.getenv("AGENT") or "wsserver"
local OPTS = {
  max_message_size = 16 * 1024 * 1024, -- the 9.x cases send up to 16 MiB
  compression = os.getenv("COMPRESSION") ~= "off",
  timeout = 30,
}

local function run_case(i)
  local cl, err = ws.connect(BASE .. "/runCase?case=" .. i .. "&agent=" .. AGENT, OPTS)
  if not cl then
    ws.log.warn("autobahn_case_failed", {case = i, error = err})
    return
  end
  while true do
    local data, kind = cl:receive(60)
    if not data then
      break -- closed (the case is over) or silent for a minute
    end
    cl:send(data, kind)
  end
  if cl:is_open() then
    cl:close()
  end
end

ws.after(0, function()
  local cl, err = ws.connect(BASE .. "/getCaseCount", OPTS)
  if not cl then
    ws.log.error("autobahn_unreachable", {url = BASE, error = err})
    ws.shutdown()
    return
  end
  local n = tonumber((cl:receive(10)))
  cl:close()
  for i = 1, n or 0 do
    run_case(i)
  end
  local rep = ws.connect(BASE .. "/updateReports?agent=" .. AGENT, OPTS)
  if rep then
    rep:receive(60) -- the fuzzingserver closes once the reports are written
  end
  ws.log.info("autobahn_done", {cases = n})
  ws.shutdown()
end)

return {}
