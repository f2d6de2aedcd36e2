-- An infinite interval.
-- expect: refuse invalid value for ping_interval
return {config = {ping_interval = math.huge}}
