-- app.config is a string.
-- expect: refuse app.config must be a table, got string
return {config = "max_connections = 5"}
