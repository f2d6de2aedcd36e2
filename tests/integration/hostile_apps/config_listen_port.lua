-- A listen port past 65535.
-- expect: refuse the port must be a number from 1 to 65535
return {config = {listen = "127.0.0.1:99999"}}
