-- ws.json (lua/ws/json.lua on lua-cjson): null sentinel, arrays vs objects, errors as nil, err.
local json = require "ws.json"

describe("ws.json", function()
  it("round-trips scalars, strings and nesting", function()
    assert.equal('"a\\"b"', json.encode('a"b'))
    assert.equal("true", json.encode(true))
    local v = json.decode('{"a":[1,2,{"b":"c"}],"s":"\\u00e9"}')
    assert.equal("c", v.a[3].b)
    assert.equal("é", v.s)
    assert.same(v, json.decode(json.encode(v)))
  end)

  it("has an explicit null sentinel", function()
    assert.is_not_nil(json.null)
    local v = json.decode('{"x":null,"l":[null,1]}')
    assert.equal(json.null, v.x)
    assert.equal(json.null, v.l[1])
    assert.equal('{"x":null}', json.encode({x = json.null}))
    assert.equal("[null,null]", json.encode({json.null, json.null}))
    assert.equal("null", json.encode(json.null))
  end)

  it("tells arrays from objects, with json.array for empty ones", function()
    assert.equal("{}", json.encode({}))
    assert.equal("[]", json.encode(json.array()))
    assert.equal("[]", json.encode(json.array({})))
    assert.equal("[1,2]", json.encode(json.array({1, 2})))
    assert.equal('{"a":[]}', json.encode({a = json.array()}))
    assert.equal('{"b":{}}', json.encode({b = {}}))
    assert.same({a = {}, b = {}}, json.decode(json.encode({a = json.array(), b = {}})))
    assert.equal('[[],[[]]]', json.encode({json.array(), {json.array()}}))
    assert.is_true(json.is_array(json.array()))
    assert.is_false(json.is_array({}))
    local t = {1}
    assert.equal(t, json.array(t)) -- marks in place
  end)

  it("does not change the value it encodes", function()
    local inner = json.array()
    local v = {list = inner, n = 1}
    json.encode(v)
    assert.equal(inner, v.list)
    assert.is_true(json.is_array(v.list))
  end)

  it("returns nil, err on decode errors and never raises", function()
    for _, bad in ipairs({"", "{", "[1,]", "{'a':1}", "tru", '"\\ud800"', string.rep("[", 5000)}) do
      local v, err = json.decode(bad)
      assert.is_nil(v)
      assert.is_string(err)
    end
    local v, err = json.decode(nil)
    assert.is_nil(v)
    assert.matches("expects a string", err)
    assert.same({nil, "json.decode expects a string, got table"}, {json.decode({})})
  end)

  it("returns nil, err for values it cannot encode", function()
    for _, bad in ipairs({function() end, {f = print}, {[1] = 1, [1000] = 2}, 0 / 0, math.huge}) do
      local s, err = json.encode(bad)
      assert.is_nil(s)
      assert.is_string(err)
    end
    local loop = {}
    loop.self = loop
    assert.is_nil(json.encode(loop))
    local marked = {json.array()}
    marked.self = marked
    assert.is_nil(json.encode(marked))
  end)

  it("decodes whole numbers as Lua integers", function()
    assert.equal("integer", math.type(json.decode('{"n":1}').n))
  end)
  -- Limits of lua-cjson 2.1.0 that ws.json does not hide (documented in lua/ws/json.lua).
  pending("encodes integers past 14 digits exactly (cjson 2.1.0 prints %.14g)", function()
    assert.equal("1234567890123456", json.encode(1234567890123456))
  end)
  pending("keeps an empty decoded array an array ([] -> {} after a round trip)", function()
    assert.equal("[]", json.encode(json.decode("[]")))
  end)
  it("rejects non-JSON numbers (NaN, Infinity, hex)", function()
    assert.is_nil(json.decode("NaN"))
    assert.is_nil(json.decode("0x10"))
  end)
end)
