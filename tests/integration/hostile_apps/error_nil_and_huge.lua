-- Handlers raise nil and a 1 MiB message with newlines.
-- expect: serve handler_error
return {
  open = function() error(nil) end,
  message = function() error(string.rep("line\n\0\r", 256 * 1024)) end,
}
