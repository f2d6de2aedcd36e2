-- The app returns a file handle instead of a table.
-- expect: refuse the app must return a table, got userdata
return io.stdout
