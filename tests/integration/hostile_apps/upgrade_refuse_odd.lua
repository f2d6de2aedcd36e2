-- upgrade refuses with a string status, a table body and raising headers.
-- expect: serve
return {
  upgrade = function(req)
    return false, "401", {}, {["X-A"] = setmetatable({}, {__tostring = error}), [1] = 2}
  end,
}
