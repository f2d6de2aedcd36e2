#!/usr/bin/env bash
# Installs everything wsserver needs to build, test and benchmark on Debian 12.
# Idempotent: packages already present are skipped; safe to run again.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)

SUDO=
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
fi

PACKAGES=(
    build-essential pkg-config clang clang-format
    liblua5.4-dev lua5.4 libev-dev libssl-dev zlib1g-dev
    libcmocka-dev lua-busted lua-cjson libhiredis-dev libcurl4-openssl-dev redis-server
    libpq-dev postgresql
    python3 python3-websockets python3-pytest python3-prometheus-client
    nodejs
    openssl procps
    systemd logrotate man-db nginx-light
    chromium fonts-liberation
)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "install-deps: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    echo "install-deps: Debian packages present"
fi

# Some nodejs builds bring their own npm (and conflict with Debian's); add Debian's only if absent.
if ! command -v npm >/dev/null 2>&1; then
    echo "install-deps: installing npm"
    $SUDO apt-get install -y -q --no-install-recommends npm
fi

# Node peers used by the integration tests, installed locally under tests/node_modules.
if [ ! -d "$here/tests/node_modules/ws" ] || [ ! -d "$here/tests/node_modules/playwright-core" ]; then
    echo "install-deps: installing node packages"
    (cd "$here/tests" && npm install --no-audit --no-fund --loglevel=error)
else
    echo "install-deps: node packages present"
fi
