-- ws.router: pattern matching, specificity, 405, the app.http table and dispatch.
local router = require "ws.router"

local function req(method, path)
  return {method = method, path = path, query = {}, headers = {}}
end

-- Calls app.http the way the server does: http["METHOD /path"](req)
local function serve(http, method, path)
  local key = (method == "HEAD" and "GET" or method) .. " " .. path
  local fn = http[key]
  if not fn then
    return nil
  end
  return fn(req(method, path))
end

describe("ws.router", function()
  it("matches literal routes", function()
    local r = router.new()
    r:get("/health", function() return 200, "ok" end)
    local fn, params = r:match("GET", "/health")
    assert.is_function(fn)
    assert.same({}, params)
    assert.is_nil(r:match("GET", "/healthz"))
    assert.is_nil(r:match("GET", "/"))
  end)

  it("captures and percent-decodes :params", function()
    local r = router.new()
    r:get("/rooms/:name/members/:id", function(_, p) return 200, p.name .. "|" .. p.id end)
    local _, p = r:match("GET", "/rooms/a%20b/members/42")
    assert.same({name = "a b", id = "42"}, p)
    assert.is_nil(r:match("GET", "/rooms//members/42")) -- empty segment does not match
    assert.is_nil(r:match("GET", "/rooms/x/members"))
    assert.is_nil(r:match("GET", "/rooms/x/members/1/extra"))
    local _, p2 = r:match("GET", "/rooms/50%25+off/members/%zz")
    assert.same({name = "50%+off", id = "%zz"}, p2) -- '+' stays, bad escapes kept
  end)

  it("matches *splat to the end of the path", function()
    local r = router.new()
    r:get("/files/*rest", function() end)
    assert.same({rest = "a/b/c.txt"}, select(2, r:match("GET", "/files/a/b/c.txt")))
    assert.same({rest = ""}, select(2, r:match("GET", "/files")))
    assert.same({rest = "x y"}, select(2, r:match("GET", "/files/x%20y")))
    assert.is_nil(r:match("GET", "/filesx/a"))
  end)

  it("ignores a trailing slash", function()
    local r = router.new()
    r:get("/a/b", function() end)
    r:get("/", function() end)
    assert.is_function(r:match("GET", "/a/b/"))
    assert.is_function(r:match("GET", "/"))
  end)

  it("prefers literal over :param over *splat, then method over any, then order", function()
    local r = router.new()
    local hit
    r:get("/x/*rest", function() hit = "splat" end)
    r:get("/x/:id", function() hit = "param" end)
    r:get("/x/new", function() hit = "literal" end)
    r:any("/y", function() hit = "any" end)
    r:get("/y", function() hit = "get" end)
    r:dispatch(req("GET", "/x/new"))
    assert.equal("literal", hit)
    r:dispatch(req("GET", "/x/7"))
    assert.equal("param", hit)
    r:dispatch(req("GET", "/x/7/8"))
    assert.equal("splat", hit)
    r:dispatch(req("GET", "/y"))
    assert.equal("get", hit)
    r:dispatch(req("DELETE", "/y"))
    assert.equal("any", hit)
  end)

  it("dispatches with params in req.params and the second argument", function()
    local r = router.new()
    r:post("/rooms/:name", function(q, p)
      assert.equal(p, q.params)
      return 201, "made " .. p.name, {["X-Room"] = p.name}
    end)
    local status, body, headers = r:dispatch(req("POST", "/rooms/lobby"))
    assert.equal(201, status)
    assert.equal("made lobby", body)
    assert.same({["X-Room"] = "lobby"}, headers)
    assert.is_nil(r:dispatch(req("POST", "/nothing")))
  end)

  it("answers 405 with Allow when only other methods match", function()
    local r = router.new()
    r:get("/thing/:id", function() end)
    r:put("/thing/:id", function() end)
    local fn, allowed = r:match("POST", "/thing/1")
    assert.is_nil(fn)
    assert.same({"GET", "HEAD", "PUT"}, allowed)
    local status, body, headers = r:dispatch(req("POST", "/thing/1"))
    assert.equal(405, status)
    assert.matches("not allowed", body)
    assert.equal("GET, HEAD, PUT", headers.Allow)
  end)

  it("runs GET routes for HEAD", function()
    local r = router.new()
    r:get("/h/:x", function(_, p) return 200, p.x end)
    assert.same({200, "1"}, {r:dispatch(req("HEAD", "/h/1"))})
  end)

  describe("handler() as app.http", function()
    local r = router.new()
    r:get("/static", function() return 200, "static" end)
    r:get("/rooms/:name", function(_, p) return 200, "room " .. p.name end)
    r:delete("/rooms/:name", function(_, p) return 204, "" end)
    r:any("/anything/*rest", function(q, p) return 200, q.method .. " " .. p.rest end)
    local http = r:handler()

    it("exposes routes without parameters as plain keys", function()
      assert.is_function(rawget(http, "GET /static"))
      assert.is_nil(rawget(http, "GET /rooms/:name"))
      local keys = {}
      for k in pairs(http) do
        keys[#keys + 1] = k
      end
      assert.same({"GET /static"}, keys)
    end)

    it("finds parameterised routes through __index", function()
      assert.same({200, "static"}, {serve(http, "GET", "/static")})
      assert.same({200, "room lobby"}, {serve(http, "GET", "/rooms/lobby")})
      assert.same({200, "room lobby"}, {serve(http, "HEAD", "/rooms/lobby")})
      assert.same({204, ""}, {serve(http, "DELETE", "/rooms/lobby")})
      assert.same({200, "PATCH a/b"}, {serve(http, "PATCH", "/anything/a/b")})
    end)

    it("answers 405 and leaves unknown paths to the server", function()
      local status, _, headers = serve(http, "POST", "/rooms/lobby")
      assert.equal(405, status)
      assert.equal("DELETE, GET, HEAD", headers.Allow)
      assert.is_nil(http["GET /nope"])
      assert.is_nil(http["garbage"])
      assert.is_nil(http[42])
    end)

    it("never stores what it looked up", function()
      for i = 1, 100 do
        local _ = http["GET /rooms/r" .. i]
      end
      local n = 0
      for _ in pairs(http) do
        n = n + 1
      end
      assert.equal(1, n)
    end)
  end)

  it("rejects bad definitions", function()
    local r = router.new()
    assert.has_error(function() r:get("nope", function() end) end)
    assert.has_error(function() r:get("/a/:", function() end) end)
    assert.has_error(function() r:get("/a/:1x", function() end) end)
    assert.has_error(function() r:get("/a/:x/:x", function() end) end)
    assert.has_error(function() r:get("/a/*x/b", function() end) end)
    assert.has_error(function() r:get("/a", "not a function") end)
    assert.has_error(function() r:route("get", "/a", function() end) end)
    r:get("/dup", function() end)
    assert.has_error(function() r:get("/dup/", function() end) end)
    assert.has_no_error(function() r:post("/dup", function() end) end)
  end)

  it("returns nothing for non-string input", function()
    local r = router.new()
    r:get("/", function() end)
    assert.is_nil(r:match(nil, "/"))
    assert.is_nil(r:match("GET", nil))
  end)
end)
