#!/usr/bin/env bash
# `make test-systemd`: the kubal Debian package under a real systemd (PID 1) in the VM
# rig (integration/systemd/README.md). Builds the .deb (and a second, newer one for the
# upgrade check), writes them with test.sh as a tar onto a second virtual disk, boots the
# cached Debian image (snapshot=on: never modified) and relays test.sh's output and exit
# code from the serial console.
#   KUBAL_VM_TIMEOUT  seconds for the whole boot (default 600)
#   KUBAL_SYSTEMD_KEEP=1  keep the work directory (console log) for debugging
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}"
./integration/systemd/setup.sh >/dev/null
for f in "$cache/vm/vmlinuz" "$cache/systemd/root.img" "$cache/systemd/initrd.cpio.gz"; do
	if [ ! -e "$f" ]; then
		echo "systemd rig: FAIL: $f missing after integration/systemd/setup.sh" >&2
		exit 2
	fi
done
work=$(mktemp -d)
[ "${KUBAL_SYSTEMD_KEEP:-}" = 1 ] && echo "systemd rig: work directory $work" >&2 || trap 'rm -rf "$work"' EXIT
mkdir -p "$work/payload"

t0=$(date +%s)
base="$(git log -1 --format=%ct).$(git rev-parse --short=8 HEAD)"
# The two packages differ only in the version stamped into the binaries (two links):
# built side by side.
pids=()
for v in 0.0~rig1 0.0~rig2; do
	KUBAL_DEB_FAST=1 KUBAL_DEB_LINTIAN=0 KUBAL_DEB_OUT="$work/payload" KUBAL_DEB_VERSION="$v" ./packaging/build-deb.sh >/dev/null &
	pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
cp integration/systemd/test.sh "$work/payload/run.sh"
(cd "$work/payload" && tar -cf "$work/payload.tar" .)
echo "systemd rig: packages built in $(($(date +%s) - t0)) s (commit $base)" >&2

t1=$(date +%s)
# mawk (Debian's awk) reads a pipe in blocks: without -W interactive the test's lines
# arrive all at once when the VM powers off.
awk_lines=()
awk -W version 2>&1 | grep -q mawk && awk_lines=(-W interactive)
# cache=unsafe: qemu ignores the guest's flushes (dpkg fsyncs every file it unpacks); the
# snapshot overlay is thrown away at exit, so durability buys nothing and each flush was
# an fsync on the host's disk.
timeout --kill-after=10 "${KUBAL_VM_TIMEOUT:-600}" \
	qemu-system-x86_64 -accel "${KUBAL_VM_ACCEL:-tcg}" -cpu max -m "${KUBAL_VM_MEM:-1024}" -smp 1 \
	-nodefaults -no-user-config -nographic -no-reboot -serial stdio -monitor none \
	-kernel "$cache/vm/vmlinuz" -initrd "$cache/systemd/initrd.cpio.gz" \
	-drive "file=$cache/systemd/root.img,format=raw,if=virtio,snapshot=on,cache=unsafe" \
	-drive "file=$work/payload.tar,format=raw,if=virtio,readonly=on" \
	-append 'console=ttyS0 panic=-1 quiet loglevel=3 systemd.show_status=0 systemd.log_level=warning' </dev/null 2>&1 |
	stdbuf -oL tr -d '\r' | tee "$work/console.log" | awk "${awk_lines[@]}" -v rcfile="$work/rc" '
		/@@KUBAL-VM-BEGIN@@/ { on = 1; next }
		/@@KUBAL-VM-END rc=/ { on = 0; sub(/.*@@KUBAL-VM-END rc=/, ""); sub(/@@.*/, ""); print > rcfile; close(rcfile); next }
		on { print; fflush() }
	'
echo "systemd rig: VM boot + tests took $(($(date +%s) - t1)) s" >&2
if [ ! -s "$work/rc" ]; then
	echo "systemd rig: FAIL: the VM reported no result (crash, panic or timeout after ${KUBAL_VM_TIMEOUT:-600}s); console:" >&2
	sed 's/^/systemd rig: console: /' "$work/console.log" | tail -60 >&2
	exit 1
fi
rc=$(cat "$work/rc")
[ "$rc" = 0 ] && echo "systemd rig: PASS" >&2 || echo "systemd rig: FAIL rc=$rc" >&2
exit "$rc"
