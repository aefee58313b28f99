#!/usr/bin/env bash
# staticcheck, built once from the module proxy at a pinned version and cached
# outside the repo.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}/bin"
version=v0.8.2
bin="$cache/staticcheck-$version"
if [ ! -x "$bin" ]; then
	mkdir -p "$cache"
	tmp=$(mktemp -d)
	GOBIN="$tmp" GOFLAGS=-mod=mod go install "honnef.co/go/tools/cmd/staticcheck@$version"
	mv "$tmp/staticcheck" "$bin"
	rmdir "$tmp"
fi
"$bin" ./...
