-- upgrade refuses with NaN and a 4 MiB body.
-- expect: serve
return {
  upgrade = function(req) return false, 0/0, string.rep("x", 4 * 1024 * 1024) end,
}
