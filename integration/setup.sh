#!/usr/bin/env bash
# Runs every rig's setup script (each idempotent, caching under $KUBAL_CACHE).
set -euo pipefail
cd "$(dirname "$0")"
export KUBAL_CACHE="${KUBAL_CACHE:-$HOME/.cache/kubal}"
mkdir -p "$KUBAL_CACHE"
for s in */setup.sh; do
	[ -x "$s" ] || continue
	echo "== setup: $s"
	"./$s"
done
