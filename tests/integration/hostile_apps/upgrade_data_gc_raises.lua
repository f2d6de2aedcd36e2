-- upgrade hands conn.data a value whose __gc raises.
-- expect: serve
return {
  upgrade = function(req)
    return {data = setmetatable({}, {__gc = function() error("gc of data") end})}
  end,
  open = function(conn) conn:close() end,
}
