-- A handler asks for a string of 2^40 bytes.
-- expect: serve handler_error
return {message = function(conn) conn:send(string.rep("x", 1 << 40)) end}
