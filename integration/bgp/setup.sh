#!/usr/bin/env bash
# BGP rig: BIRD2 from Debian (the router the bgp integration tests peer with, inside a
# network namespace). Idempotent; pinned to Debian 12's exact package version.
set -euo pipefail
version=2.0.12-7
have=$(dpkg-query -W -f='${Status} ${Version}' bird2 2>/dev/null || true)
if [ "$have" != "install ok installed $version" ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get -o DPkg::Lock::Timeout=600 update
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "bird2=$version"
fi
# The package enables a system-wide bird.service; the tests run their own BIRD in a
# namespace and do not need it.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	systemctl disable --now bird.service >/dev/null 2>&1 || true
fi
for b in bird birdc ip; do
	command -v "$b" >/dev/null || { echo "bgp setup: $b missing after install" >&2; exit 1; }
done
echo "bgp rig: $(bird --version 2>&1 | head -1)"
