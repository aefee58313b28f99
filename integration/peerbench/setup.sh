#!/usr/bin/env bash
# Peer benchmark rig (integration/peerbench/README.md): Debian's keepalived on the host,
# never running there, and a gzip'd cpio of its binary with its shared libraries that
# run.sh appends to the IPVS VM's initramfs. Idempotent; the cpio is cached under
# $KUBAL_CACHE/peerbench, keyed by this script and the installed keepalived version.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}/peerbench"
mkdir -p "$cache"

# cpio packs the initramfs part (integration/vm/setup.sh installs it too, but runs
# after this script on a new machine).
if ! dpkg-query -W -f='${Status}' cpio 2>/dev/null | grep -q 'install ok installed'; then
	echo "peerbench setup: apt-get install cpio"
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends cpio >/dev/null
fi
if ! dpkg-query -W -f='${Status}' keepalived 2>/dev/null | grep -q 'install ok installed'; then
	echo "peerbench setup: apt-get install keepalived (its service is kept from starting)"
	# policy-rc.d 101 = "action forbidden": the package's postinst must not start a
	# keepalived on the host (it would program the host's IPVS, if it has any). Ours is
	# only put in place when the host has none, and removed after.
	own_policy=
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		own_policy=1
	fi
	rc=0
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends keepalived >/dev/null || rc=$?
	[ -n "$own_policy" ] && rm -f /usr/sbin/policy-rc.d
	[ "$rc" = 0 ] || exit "$rc"
fi
# Whatever installed it: on a host with systemd, keep the service off.
if [ -d /run/systemd/system ]; then systemctl disable --now keepalived.service >/dev/null 2>&1 || true; fi

ver=$(dpkg-query -W -f='${Version}' keepalived)
key=$( (cat "$here/setup.sh"; echo "$ver") | sha256sum | cut -c1-12)
out="$cache/keepalived-$key.cpio.gz"
if [ ! -f "$out" ]; then
	echo "peerbench setup: packing keepalived $ver for the VM"
	root=$(mktemp -d)
	trap 'rm -rf "$root"' EXIT
	mkdir -p "$root/usr/sbin" "$root/etc/keepalived"
	cp /usr/sbin/keepalived "$root/usr/sbin/keepalived"
	ldd /usr/sbin/keepalived | grep -o '/[^ ]*' | while read -r lib; do
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
	mv "$out.tmp" "$out"
	find "$cache" -maxdepth 1 -name 'keepalived-*.cpio.gz' ! -name "$(basename "$out")" -delete
fi
ln -sfn "$(basename "$out")" "$cache/keepalived.cpio.gz"
echo "peerbench setup: ok (keepalived $ver, $(du -h "$out" | cut -f1) in $cache)"
