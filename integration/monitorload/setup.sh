#!/usr/bin/env bash
# Monitor rig: ss and ip (iproute2) for the keepalive test and the load harness's
# namespace, unshare (util-linux) for the harness's private network namespace.
# Idempotent; pinned to Debian 12's exact package versions.
set -euo pipefail
want=()
command -v ss >/dev/null && command -v ip >/dev/null || want+=(iproute2=6.1.0-3)
command -v unshare >/dev/null || want+=(util-linux=2.38.1-5+deb12u3)
if [ "${#want[@]}" -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${want[@]}"
fi
for b in ss ip unshare; do
	command -v "$b" >/dev/null || { echo "monitor setup: $b missing after install" >&2; exit 1; }
done
echo "monitor rig: ss, ip and unshare present"
