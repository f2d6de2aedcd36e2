-- A static folder that does not exist.
-- expect: refuse must be a readable folder
return {config = {static = "/nonexistent/wsserver/folder"}}
