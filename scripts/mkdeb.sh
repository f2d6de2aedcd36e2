#!/usr/bin/env bash
# Turns a `make install PREFIX=/usr` tree into a Debian package with dpkg-deb: adds the
# configuration under /etc (the chat example as /etc/wsserver/app.lua, /etc/default/wsserver,
# /etc/logrotate.d/wsserver: conffiles), the control file (Depends from the
# packages owning the binary's shared libraries), md5sums and the maintainer scripts in
# contrib/deb/. Usage: scripts/mkdeb.sh ROOT BINARY OUTDIR  -> OUTDIR/wsserver_<ver>_<arch>.deb
# (DEB_MAINTAINER sets the Maintainer field).
set -euo pipefail

root=$1
binary=$2
outdir=$3
here=$(cd "$(dirname "$0")/.." && pwd)

version=$("$binary" --version | awk '{print $2}')
arch=$(dpkg --print-architecture)

# configuration (conffiles); the chat page the default options serve comes with make install
install -d "$root/etc/wsserver" "$root/etc/default" "$root/etc/logrotate.d"
install -m 644 "$here/examples/chat/chat.lua" "$root/etc/wsserver/app.lua"
install -m 644 "$here/contrib/default.wsserver" "$root/etc/default/wsserver"
install -m 644 "$here/contrib/logrotate" "$root/etc/logrotate.d/wsserver"

# Debian layout: stripped binary, compressed man page, no build-only files
strip --strip-unneeded "$root/usr/bin/wsserver"
gzip -9nf "$root/usr/share/man/man1/wsserver.1"

# Depends: the package of every shared library the binary loads (libc6 last, as usual)
depends=$(ldd "$binary" | awk '/=> \//{print $3}' | while read -r lib; do
    dpkg -S "$lib" 2>/dev/null || dpkg -S "$(readlink -f "$lib")" 2>/dev/null || true
done | cut -d: -f1 | sort -u | paste -sd, - | sed 's/,/, /g')
if [ -z "$depends" ]; then
    echo "mkdeb: cannot tell which packages provide the binary's libraries" >&2
    exit 1
fi

mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<CONTROL
Package: wsserver
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-wsserver developers <wsserver@localhost>}
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: $depends, passwd
Suggests: lua5.4, lua-busted, lua-cjson, redis-server
Section: net
Priority: optional
Description: Lua-scriptable WebSocket application server
 A WebSocket server (RFC 6455, permessage-deflate, TLS) on libev whose
 application is a Lua 5.4 script: chat rooms, live feeds, games. The app
 reloads in place without dropping a connection. Runs as a systemd service
 (Type=notify; systemctl reload reloads the app) with the chat example as
 /etc/wsserver/app.lua.
CONTROL
(cd "$root" && find etc -type f | sed 's|^|/|' | sort) > "$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -print0 |
    sed -z 's|^\./||' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
for script in postinst prerm postrm; do
    install -m 755 "$here/contrib/deb/$script" "$root/DEBIAN/$script"
done
chmod 644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

mkdir -p "$outdir"
deb="$outdir/wsserver_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
