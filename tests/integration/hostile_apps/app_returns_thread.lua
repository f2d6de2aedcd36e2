-- The app returns a coroutine.
-- expect: refuse the app must return a table, got thread
return coroutine.create(function() end)
