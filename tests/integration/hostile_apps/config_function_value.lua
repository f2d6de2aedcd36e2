-- A function where a number belongs.
-- expect: refuse invalid value for max_connections: must be a whole number from 1 to 10000000 (got a function)
return {config = {max_connections = print}}
