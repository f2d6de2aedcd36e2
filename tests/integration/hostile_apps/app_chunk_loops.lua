-- The chunk never returns: the handler budget stops it.
-- expect: refuse handler_timeout
while true do end
