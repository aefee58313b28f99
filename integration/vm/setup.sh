#!/usr/bin/env bash
# VM rig for real-kernel IPVS tests (see ../../../shared/rigs/VM-IPVS.md and
# integration/vm/README.md). Idempotent: installs the Debian packages, extracts a Debian
# cloud kernel (never installed) and builds the base initramfs, all cached under
# $KUBAL_CACHE/vm. Test binaries are appended later as a second cpio by ./vmexec.
set -euo pipefail
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}/vm"
mkdir -p "$cache"

# Debian packages on the host: the emulator, the guest userland pieces, module tools.
need=()
for p in qemu-system-x86 busybox-static ipvsadm kmod cpio iproute2; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "vm setup: apt-get install ${need[*]}"
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${need[@]}" >/dev/null
fi

# The kernel: the package linux-image-cloud-amd64 depends on. Pinned to the one the rig
# was measured with; if the mirror has moved on, take the current dependency (loudly).
pkg="${KUBAL_VM_KERNEL_PKG:-linux-image-6.1.0-56-cloud-amd64}"
if ! apt-cache show "$pkg" >/dev/null 2>&1; then
	cur=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
	echo "vm setup: WARNING: $pkg not in the apt lists; using $cur (linux-image-cloud-amd64's dependency)" >&2
	pkg="$cur"
fi
kver="${pkg#linux-image-}"
kdir="$cache/kernel-$kver"
if [ ! -f "$kdir/.done" ]; then
	echo "vm setup: fetching $pkg"
	rm -rf "$kdir" && mkdir -p "$kdir"
	tmp=$(mktemp -d)
	chmod 755 "$tmp" # apt downloads as _apt
	(cd "$tmp" && apt-get download "$pkg" >/dev/null)
	dpkg -x "$tmp"/*.deb "$kdir"
	rm -rf "$tmp"
	# The .deb ships no modules.dep.
	depmod -b "$kdir" "$kver"
	touch "$kdir/.done"
fi
ln -sfn "kernel-$kver" "$cache/kernel"

# Base initramfs: busybox as /init's shell, iproute2's ip, ipvsadm (with their shared
# libraries), the IPVS/veth/bridge modules in load order. Rebuilt when this script or
# the init script changes.
here="$(cd "$(dirname "$0")" && pwd)"
stamp=$(cat "$here/setup.sh" "$here/init.sh" | sha256sum | cut -c1-16)-$kver
base="$cache/base-$stamp.cpio.gz"
if [ ! -f "$base" ]; then
	echo "vm setup: building base initramfs"
	root=$(mktemp -d)
	trap 'rm -rf "$root"' EXIT
	mkdir -p "$root"/{bin,sbin,usr/sbin,etc,proc,sys,dev,run,tmp,lib/modules,payload}
	cp /bin/busybox "$root/bin/busybox"
	# Applets by hand, never `ip`: busybox ash would run its own ip applet (no netns).
	for a in sh mount mkdir ln cat echo sleep poweroff insmod ls sysctl nc ps kill env \
		uname grep sed tr head tail seq true false chmod rm cp dmesg date; do
		ln -s busybox "$root/bin/$a"
	done
	copy_bin() { # binary + its shared libraries at the same paths
		local b="$1" dst="$2"
		cp "$b" "$root$dst"
		ldd "$b" | grep -o '/[^ ]*' | while read -r lib; do
			mkdir -p "$root$(dirname "$lib")"
			cp -L "$lib" "$root$lib"
		done
	}
	copy_bin "$(command -v ip || echo /usr/sbin/ip)" /sbin/ip
	copy_bin "$(command -v ipvsadm || echo /usr/sbin/ipvsadm)" /sbin/ipvsadm
	# Modules with their dependencies, in load order.
	: >"$root/etc/modules.order"
	for m in ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_lblc ip_vs_lblcr ip_vs_dh \
		ip_vs_sh ip_vs_sed ip_vs_nq ip_vs_mh ipip ip6_tunnel tunnel4 veth dummy bridge; do
		modprobe -d "$kdir" -S "$kver" --show-depends "$m" | awk '$1=="insmod"{print $2}'
	done | awk '!seen[$0]++' | while read -r ko; do
		rel="${ko#"$kdir"}"
		mkdir -p "$root$(dirname "$rel")"
		case "$ko" in
		*.xz) xz -dc "$ko" >"$root${rel%.xz}"; rel="${rel%.xz}" ;;
		*.zst) zstd -qdc "$ko" >"$root${rel%.zst}"; rel="${rel%.zst}" ;;
		*) cp "$ko" "$root$rel" ;;
		esac
		echo "$rel" >>"$root/etc/modules.order"
	done
	# moby/ipvs runs `modprobe ip_vs`; the modules are loaded by /init already.
	printf '#!/bin/sh\n# modules are preloaded by /init\nexit 0\n' >"$root/sbin/modprobe"
	chmod 755 "$root/sbin/modprobe"
	cp "$here/init.sh" "$root/init"
	chmod 755 "$root/init"
	(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$base.tmp"
	mv "$base.tmp" "$base"
fi
ln -sfn "$(basename "$base")" "$cache/base.cpio.gz"
# Drop base images of older setup.sh/init.sh versions.
find "$cache" -maxdepth 1 -name 'base-*.cpio.gz' ! -name "$(basename "$base")" -delete
tmpk=$(mktemp "$cache/vmlinuz.XXXXXX") # unique: setups may run side by side
cp "$kdir/boot/vmlinuz-$kver" "$tmpk" && chmod 644 "$tmpk" && mv "$tmpk" "$cache/vmlinuz"
echo "vm setup: ok (kernel $kver, $(du -h "$base" | cut -f1) base initramfs in $cache)"
