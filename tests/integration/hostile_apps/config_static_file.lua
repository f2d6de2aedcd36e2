-- A static 'folder' that is a file.
-- expect: refuse not a folder
return {config = {static = "/etc/hostname"}}
