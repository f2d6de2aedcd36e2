-- A protocols list holding a table.
-- expect: refuse invalid value for protocols: a list of strings
return {config = {protocols = {{}}}}
