-- The app replaces package.searchpath, then asks for a reload.
-- expect: serve reloading the app's modules failed
package.searchpath = function() error("searchpath replaced") end
return {open = function() ws.reload() end}
