#!/usr/bin/env bash
# staticcheck, built once from the module proxy at a pinned version and cached.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}/bin"
version=2026.1
bin="$cache/staticcheck-$version"
if [ ! -x "$bin" ]; then
	mkdir -p "$cache"
	GOBIN=$(mktemp -d) go install "honnef.co/go/tools/cmd/staticcheck@$version"
	mv "$(go env GOBIN 2>/dev/null || true)"/staticcheck "$bin" 2>/dev/null || true
fi
"$bin" ./...
