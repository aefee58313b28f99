#!/usr/bin/env bash
# BGP rig: BIRD2 from Debian (the router the bgp integration tests peer with, inside
# network namespaces), plus ip/tc (iproute2) and unshare (util-linux) the rig uses.
# Idempotent; pinned to Debian 12's exact package versions.
set -euo pipefail
want=(bird2=2.0.12-7)
command -v ip >/dev/null && command -v tc >/dev/null || want+=(iproute2=6.1.0-3)
command -v unshare >/dev/null || want+=(util-linux=2.38.1-5+deb12u3)
have=$(dpkg-query -W -f='${Status} ${Version}' bird2 2>/dev/null || true)
if [ "$have" = "install ok installed 2.0.12-7" ]; then
	want=("${want[@]:1}")
fi
if [ "${#want[@]}" -gt 0 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${want[@]}"
fi
# The package enables a system-wide bird.service; the tests run their own BIRD in a
# namespace and do not need it.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	systemctl disable --now bird.service >/dev/null 2>&1 || true
fi
for b in bird birdc ip tc unshare; do
	command -v "$b" >/dev/null || { echo "bgp setup: $b missing after install" >&2; exit 1; }
done
echo "bgp rig: $(bird --version 2>&1 | head -1)"
