-- A choice option given as a boolean.
-- expect: refuse invalid value for compression: must be one of off, on (got a boolean)
return {config = {compression = true}}
