#!/usr/bin/env bash
# `make test-ecmp`: the active-active rig of issue 18 (README.md here): several kubal
# directors, each in its own network namespace with its own IPVS, behind a BIRD2 router
# doing ECMP with BFD, in the IPVS VM. Idempotent: runs the VM and BGP rig setup scripts
# (cached under $KUBAL_CACHE), builds a static kubal from this tree, packs it with BIRD
# (and its libraries) into an initramfs layer on top of the VM rig's base image, and
# runs TestECMP in the VM through integration/vm/vmexec. Extra arguments go to go test.
# Env: KUBAL_ECMP_CONNS (long-lived connections, default 300), KUBAL_ECMP_INTERVAL_MS
# (one request per connection per interval, default 2000; the issue's 200 saturates the
# single TCG vCPU, README.md), KUBAL_ECMP_HOLD (seconds of traffic observed after each
# step, default 3), KUBAL_ECMP_FLOWS (synthetic flows, default 300), KUBAL_VM_MEM (MiB,
# default 1536), KUBAL_VM_TIMEOUT (s, default 600).
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}"
./integration/vm/setup.sh >/dev/null
./integration/bgp/setup.sh >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/vm" "$work/layer/usr/sbin"
# The shared static build (integration/build-static.sh): relinked only when the code changed.
cp "$(./integration/build-static.sh)/kubal" "$work/layer/usr/sbin/kubal"
# BIRD with its shared libraries at the same paths (the guest has the same loader).
bird=$(command -v bird)
cp "$bird" "$work/layer/usr/sbin/bird"
ldd "$bird" | grep -o '/[^ ]*' | while read -r lib; do
	mkdir -p "$work/layer$(dirname "$lib")"
	cp -L "$lib" "$work/layer$lib"
done
(cd "$work/layer" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/layer.cpio.gz"
# vmexec boots $KUBAL_CACHE/vm/{vmlinuz,base.cpio.gz} + the test binary: give it a
# cache whose base is the rig's base + this layer (the kernel unpacks concatenated
# archives in order).
ln -s "$cache/vm/vmlinuz" "$work/vm/vmlinuz"
cat "$cache/vm/base.cpio.gz" "$work/layer.cpio.gz" >"$work/vm/base.cpio.gz"
export KUBAL_REQUIRE_RIGS=1 KUBAL_VM_MEM="${KUBAL_VM_MEM:-1536}" KUBAL_VM_TIMEOUT="${KUBAL_VM_TIMEOUT:-600}"
KUBAL_CACHE="$work" CGO_ENABLED=0 go test -count=1 -timeout 15m -v -run '^TestECMP$' \
	-exec "$PWD/integration/vm/vmexec" ./integration/ecmp "$@"
