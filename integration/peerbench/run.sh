#!/usr/bin/env bash
# kubal vs keepalived on real IPVS in the VM rig (README.md here, docs/perf/peers.md).
#   run.sh           the smoke version (a few servers, ~1-2 min; `make peerbench-smoke`)
#   run.sh --full    the full benchmark (`make peerbench`)
# Builds a static kubal from this tree, packs it with keepalived (cached by setup.sh)
# into an initramfs layer on top of the VM rig's base image, and runs TestPeerBench in
# the VM through integration/vm/vmexec. Extra arguments go to go test.
# Env: KUBAL_VM_PERF_PEER_SERVICES (start/reload/restart services),
# KUBAL_VM_PERF_PEER_COST_SERVICES (cost/detection services of 10 servers),
# KUBAL_VM_PERF_PEER_FAILURES, KUBAL_VM_MEM, KUBAL_VM_TIMEOUT.
set -euo pipefail
cd "$(dirname "$0")/../.."
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}"
mode=smoke
if [ "${1:-}" = "--full" ]; then
	mode=full
	shift
fi
./integration/vm/setup.sh >/dev/null
./integration/peerbench/setup.sh >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/vm" "$work/layer/usr/sbin"
cp "$(./integration/build-static.sh)/kubal" "$work/layer/usr/sbin/kubal"
(cd "$work/layer" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/kubal.cpio.gz"
# vmexec boots $KUBAL_CACHE/vm/{vmlinuz,base.cpio.gz} + the test binary: give it a
# cache whose base is the rig's base + keepalived + this kubal (the kernel unpacks
# concatenated archives in order).
ln -s "$cache/vm/vmlinuz" "$work/vm/vmlinuz"
cat "$cache/vm/base.cpio.gz" "$cache/peerbench/keepalived.cpio.gz" "$work/kubal.cpio.gz" >"$work/vm/base.cpio.gz"
export KUBAL_VM_PERF_PEER="$mode" KUBAL_REQUIRE_RIGS=1
if [ "$mode" = full ]; then
	export KUBAL_VM_MEM="${KUBAL_VM_MEM:-2048}" KUBAL_VM_TIMEOUT="${KUBAL_VM_TIMEOUT:-3600}"
	timeout=60m
else
	export KUBAL_VM_TIMEOUT="${KUBAL_VM_TIMEOUT:-600}"
	timeout=10m
fi
KUBAL_CACHE="$work" CGO_ENABLED=0 exec go test -count=1 -timeout "$timeout" -v -run '^TestPeerBench$' \
	-exec "$PWD/integration/vm/vmexec" ./integration/peerbench "$@"
