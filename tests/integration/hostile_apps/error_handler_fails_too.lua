-- app.error raises while reporting a failed handler.
-- expect: serve handler="error"
return {
  message = function() error("first") end,
  error = function(msg, conn) conn:send(msg) error("second") end,
}
