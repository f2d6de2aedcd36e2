-- The local upstream of bench/apps/http_get.lua: GET / answers 200 "ok" (keep-alive).
return {
  config = { log_level = "warn" },

  http = {
    ["GET /"] = function()
      return 200, "ok"
    end,
  },
}
