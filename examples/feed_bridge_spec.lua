-- Specs for the feed bridge (feed-bridge.lua), written with ws.testing: the app runs in the real
-- server, in-process; t:upstream stands in for the upstream feed, so no socket is opened and the
-- reconnect back-off runs on the simulated clock.
--
--   lua5.4 /usr/bin/busted --lpath="lua/?.lua" --cpath="build/lua/?.so" examples/feed_bridge_spec.lua
--                                                  (repo root, after make)
--   make test-lua                                  (runs it through tests/lua/feed_bridge_app_spec.lua)
local testing = require "ws.testing"
local json = require "ws.json"

local HERE = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
local APP = HERE .. "/feed-bridge.lua"
local UPSTREAM = os.getenv("UPSTREAM") or "ws://127.0.0.1:9000/feed" -- as the app reads it

-- The app with its upstream standing by, and a browser that got its first status.
local function start()
  local t = testing.load(APP)
  local up = t:upstream(UPSTREAM)
  local browser = assert(t:connect())
  return t, up, browser
end

describe("examples/feed-bridge.lua", function()
  it("tells a browser the bridge's state, then republishes every upstream message", function()
    local t, up, browser = start()
    -- the connection tried at load met no upstream: the browser hears "down"
    assert.same({type = "bridge", upstream = "down", received = 0}, browser:next_json())
    t:advance(1) -- the back-off
    assert.equal(1, up.connections)
    assert.equal("/feed", up.request.path)
    assert.same({type = "bridge", upstream = "up", received = 0}, browser:next_json())
    local other = assert(t:connect())
    assert.same({type = "bridge", upstream = "up", received = 0}, other:next_json())
    up:send('{"BTC":97000}')
    up:send_binary("\1\2\3")
    for _, b in ipairs({browser, other}) do
      assert.same({{kind = "text", data = '{"BTC":97000}'}, {kind = "binary", data = "\1\2\3"}},
                  b:received())
    end
    browser:send("status")
    assert.same({type = "bridge", upstream = "up", received = 2}, browser:next_json())
    assert.is_nil(up:next()) -- the bridge only listens
    t:close()
  end)

  it("keeps the browsers connected while the upstream restarts, and reconnects", function()
    local t, up, browser = start()
    t:advance(1)
    browser:received()
    up:drop()
    assert.same({type = "bridge", upstream = "down", received = 0}, browser:next_json())
    assert.is_true(browser:is_open())
    up:refuse(503, "restarting") -- the upstream comes back slowly
    t:advance(1)
    assert.is_true(up.connections >= 2)
    assert.is_nil(browser:next())
    up:accept()
    t:advance(5) -- at most reconnect_max_delay
    assert.same({type = "bridge", upstream = "up", received = 0}, browser:next_json())
    up:send("after the restart")
    assert.same({kind = "text", data = "after the restart"}, browser:next())
    t:close()
  end)

  it("hands the upstream over to the new version on a reload", function()
    local t, up, browser = start()
    t:advance(1)
    up:send("one")
    browser:received()
    assert.is_true(t:reload())
    -- the old version's client says goodbye (1001), the new version's chunk connects again
    assert.same({kind = "close", code = 1001, reason = "reload"}, up:next())
    t:advance(1)
    assert.equal(2, up.connections)
    assert.is_true(up:is_open())
    assert.same({{type = "bridge", upstream = "down", received = 1},
                 {type = "bridge", upstream = "up", received = 1}}, browser:received_json())
    up:send("two")
    assert.same({kind = "text", data = "two"}, browser:next())
    browser:send("status")
    assert.same({type = "bridge", upstream = "up", received = 2}, browser:next_json())
    t:close()
  end)

  it("closes a browser that writes anything but \"status\" with 1003", function()
    local t, _, browser = start()
    browser:received()
    browser:send("buy")
    local msg = browser:next()
    assert.same({"close", 1003}, {msg.kind, msg.code})
    t:close()
  end)
end)
