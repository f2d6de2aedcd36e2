-- The conformance scenarios (tests/kit/scenarios/*.json) in the ws.testing kit alone: every
-- scenario runs through tests/kit/driver.lua and the expectations written in it ("expect",
-- "expect_result") must hold. tests/integration/test_kit_conformance.py runs the same scenarios
-- against build/wsserver and compares the two transcripts step by step.
local json = require "ws.json"

local ROOT = "."
local DRIVER = ROOT .. "/tests/kit/driver.lua"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function scenarios()
  local list = {}
  local p = assert(io.popen("ls " .. ROOT .. "/tests/kit/scenarios/*.json"))
  for path in p:lines() do
    list[#list + 1] = path
  end
  p:close()
  return list
end

local function masked(v, mask)
  if type(v) ~= "table" then
    return v
  end
  local out = {}
  for k, x in pairs(v) do
    out[k] = mask[k] and "<masked>" or masked(x, mask)
  end
  return out
end

-- A received entry as compared: JSON text parsed (key order does not matter).
local function norm(e, mask)
  if e.kind == "text" then
    local v = json.decode(e.data)
    if type(v) == "table" then
      return {kind = "text", json = masked(v, mask)}
    end
  end
  return e
end

local function norm_list(list, mask)
  local out = {}
  for i, e in ipairs(list or {}) do
    out[i] = norm(e, mask)
  end
  return out
end

local run_kit = assert(loadfile(DRIVER))("--module") -- in this process: each its own server

describe("conformance scenarios in the kit", function()
  for _, path in ipairs(scenarios()) do
    local scenario = assert(json.decode(read(path)))
    it(path:match("[^/]+$") .. ": " .. scenario.description, function()
      local mask = {}
      for _, k in ipairs(scenario.mask or {}) do
        mask[k] = true
      end
      local kit = run_kit(path)
      assert.equal(#scenario.steps, #kit.steps)
      for i, step in ipairs(scenario.steps) do
        local got = kit.steps[i]
        for name, want in pairs(step.expect or {}) do
          assert.same(norm_list(want, mask), norm_list(got.received[name], mask),
                      string.format("step %d (%s), client %s", i, got.op, name))
        end
        for k, want in pairs(step.expect_result or {}) do
          assert.same(want, got.result[k], string.format("step %d (%s), result %s", i, got.op, k))
        end
      end
    end)
  end
end)
