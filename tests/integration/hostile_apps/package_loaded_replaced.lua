-- The app replaces package.loaded with a number, then asks for a reload.
-- expect: serve package.loaded is not a table
package.loaded = 5
return {open = function() ws.reload() end}
