-- A number option given as a string.
-- expect: refuse invalid value for ping_interval: must be a number of seconds from 0 to 86400 (got a string)
return {config = {ping_interval = "20"}}
