#!/usr/bin/env bash
# Writes the man page to stdout: TEMPLATE with its @OPTIONS@ line replaced by
# `BINARY --help-man` (the option table) and @VERSION@ by the binary's version.
# Usage: scripts/gen-man.sh BINARY TEMPLATE > docs/wsserver.1
set -euo pipefail
binary=$1
template=$2
version=$("$binary" --version | awk '{print $2}')
options=$(mktemp)
trap 'rm -f "$options"' EXIT
"$binary" --help-man > "$options"
awk -v options="$options" -v version="$version" '
    /^\.\\"/ { next }
    $0 == "@OPTIONS@" { while ((getline line < options) > 0) print line; next }
    { gsub(/@VERSION@/, version); print }
' "$template"
