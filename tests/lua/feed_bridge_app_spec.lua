-- Runs examples/feed_bridge_spec.lua (the feed bridge's specs, kept next to the app) as part of
-- `make test-lua`, which only looks in tests/lua. The spec runs in this file's environment, so it
-- sees busted's describe/it/assert.
local path = "examples/feed_bridge_spec.lua"
assert(loadfile(path, "t", _ENV))()
