#!/usr/bin/env bash
# systemd rig (integration/systemd/README.md): a Debian bookworm userland with systemd as
# PID 1, booted on the IPVS VM's Debian cloud kernel, in which the kubal .deb is installed
# with apt. Idempotent, cached under $KUBAL_CACHE/systemd:
#   rootfs-<hash>/   debootstrap (minbase + systemd, bird2, iproute2, ipvsadm, curl)
#   root-<hash>.img  ext4 image of it + the kernel's modules + the rig's runner unit; the
#                    VM boots it read-write with qemu's snapshot=on (never modified)
#   initrd-<hash>    busybox initramfs that mounts /dev/vda and switch_roots to systemd
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}/systemd"
vmcache="${KUBAL_CACHE:-$HOME/.cache/kubal}/vm"
mkdir -p "$cache"

need=()
for p in debootstrap e2fsprogs busybox-static cpio qemu-system-x86 lintian prometheus; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
	echo "systemd setup: apt-get install ${need[*]}"
	apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends "${need[@]}" >/dev/null
	# prometheus is here for promtool only: its daemon would hold port 9090, the tests'
	# instrumentation port, on a host that runs systemd.
	if [ -d /run/systemd/system ]; then systemctl disable --now prometheus.service >/dev/null 2>&1 || true; fi
fi

# The kernel comes from the IPVS VM rig (idempotent; it runs after this script in
# integration/setup.sh's order, so make sure it is there).
[ -e "$vmcache/kernel/.done" ] && [ -e "$vmcache/vmlinuz" ] || "$here/../vm/setup.sh" >/dev/null
kdir="$(readlink -f "$vmcache/kernel")"
kver="$(ls "$kdir/lib/modules")"

# 1. The Debian userland (slow: ~3-6 min cold; keyed by the package list only).
mirror="${KUBAL_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
pkgs=systemd,systemd-sysv,dbus,bird2,iproute2,ipvsadm,kmod,adduser,curl,procps,ca-certificates
rkey=$(echo "bookworm $pkgs" | sha256sum | cut -c1-12)
rootfs="$cache/rootfs-$rkey"
if [ ! -f "$rootfs/.done" ]; then
	echo "systemd setup: debootstrap bookworm ($pkgs) from $mirror"
	rm -rf "$rootfs"
	debootstrap --variant=minbase --include="$pkgs" bookworm "$rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
		{ tail -20 "$cache/debootstrap.log" >&2; exit 1; }
	chroot "$rootfs" apt-get clean
	rm -rf "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/lib/apt/lists/*
	touch "$rootfs/.done"
	find "$cache" -maxdepth 1 -name 'rootfs-*' ! -name "rootfs-$rkey" -exec rm -rf {} +
fi

# 2. The boot image: the userland + modules + the rig's runner (fast; keyed by this
# script, the runner and the kernel).
ikey=$(cat "$here/setup.sh" "$here/rig-run" "$here/initrd-init" | sha256sum | cut -c1-12)-$rkey-$kver
img="$cache/root-$ikey.img"
initrd="$cache/initrd-$ikey.cpio.gz"
if [ ! -f "$img" ] || [ ! -f "$initrd" ]; then
	echo "systemd setup: building the boot image"
	stage=$(mktemp -d "$cache/stage.XXXXXX")
	trap 'rm -rf "$stage"' EXIT
	cp -a "$rootfs/." "$stage/"
	rm -f "$stage/.done"
	# Modules of the VM kernel, so modprobe and systemd-modules-load work as on a host.
	mkdir -p "$stage/lib/modules"
	cp -a "$kdir/lib/modules/$kver" "$stage/lib/modules/"
	echo kubal-rig >"$stage/etc/hostname"
	printf '127.0.0.1 localhost\n127.0.1.1 kubal-rig\n' >"$stage/etc/hosts"
	: >"$stage/etc/fstab"
	# Nothing the rig does not need: no logins, timers, or the distribution's own BIRD
	# (the test runs BIRD in a "router" namespace; port 179 of the host is kubal's).
	for u in getty@.service serial-getty@.service console-getty.service bird.service \
		apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
		fstrim.timer systemd-timesyncd.service systemd-networkd-wait-online.service; do
		ln -sfn /dev/null "$stage/etc/systemd/system/$u"
	done
	install -m 0755 "$here/rig-run" "$stage/usr/local/sbin/rig-run"
	cat >"$stage/etc/systemd/system/kubal-rig.service" <<-'EOF'
		[Unit]
		Description=kubal systemd rig: run the test payload from /dev/vdb, then power off
		After=basic.target dbus.service
		Wants=dbus.service
		[Service]
		Type=oneshot
		ExecStart=/usr/local/sbin/rig-run
		StandardOutput=tty
		StandardError=tty
		TTYPath=/dev/ttyS0
		[Install]
		WantedBy=multi-user.target
	EOF
	ln -sfn ../kubal-rig.service "$stage/etc/systemd/system/multi-user.target.wants/kubal-rig.service"
	rm -f "$cache"/root-*.img "$cache"/initrd-*.cpio.gz
	mkfs.ext4 -q -F -L kubalroot -d "$stage" "$img.tmp" 2G
	mv "$img.tmp" "$img"

	# initramfs: busybox, the block/ext4 modules, /init mounts /dev/vda and switch_roots.
	ird="$stage.initrd"
	mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
	cp /bin/busybox "$ird/bin/busybox"
	for a in sh mount umount mkdir insmod switch_root echo cat sleep; do ln -s busybox "$ird/bin/$a"; done
	: >"$ird/modules.order"
	for m in virtio_pci virtio_blk ext4; do
		modprobe -d "$kdir" -S "$kver" --show-depends "$m" 2>/dev/null | awk '$1=="insmod"{print $2}'
	done | awk '!seen[$0]++' | while read -r ko; do
		b="$(basename "$ko")"
		case "$ko" in
		*.xz) xz -dc "$ko" >"$ird/lib/modules/${b%.xz}"; b="${b%.xz}" ;;
		*.zst) zstd -qdc "$ko" >"$ird/lib/modules/${b%.zst}"; b="${b%.zst}" ;;
		*) cp "$ko" "$ird/lib/modules/$b" ;;
		esac
		echo "/lib/modules/$b" >>"$ird/modules.order"
	done
	install -m 0755 "$here/initrd-init" "$ird/init"
	(cd "$ird" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp"
	mv "$initrd.tmp" "$initrd"
	rm -rf "$ird"
fi
ln -sfn "$(basename "$img")" "$cache/root.img"
ln -sfn "$(basename "$initrd")" "$cache/initrd.cpio.gz"
echo "systemd setup: ok ($(du -h --apparent-size "$img" | cut -f1) image, $(du -h "$img" | cut -f1) used, kernel $kver)"
