#!/usr/bin/env bash
# API rig: systemd-analyze (the unit-file test) and wrk (the load harness in
# api/internal/perfserver). Idempotent.
set -euo pipefail
want=()
command -v systemd-analyze >/dev/null || want+=(systemd)
command -v wrk >/dev/null || want+=(wrk)
if [ "${#want[@]}" -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${want[@]}"
fi
echo "api rig: $(systemd-analyze --version | head -1), $(wrk -v 2>&1 | head -1)"
