-- load() raises: --check must say so instead of ok.
-- expect: refuse load() failed
return {load = function() error("not today") end}
