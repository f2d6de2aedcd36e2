-- A listen address without a port.
-- expect: refuse expected host:port
return {config = {listen = {"localhost"}}}
