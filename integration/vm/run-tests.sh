#!/usr/bin/env bash
# `make test-vm`: runs the real-kernel IPVS tests inside the VM rig. Each test binary
# is built static and booted once through the go test -exec wrapper ./vmexec.
#   run-tests.sh            tests (KUBAL_REQUIRE_RIGS=1: nothing may skip)
#   run-tests.sh --bench    also the IPVS benchmarks (kubal vs ipvsadm -R, docs/perf/ipvs.md)
# Extra arguments go to go test (e.g. -run TestDR -v).
set -euo pipefail
cd "$(dirname "$0")/../.."
./integration/vm/setup.sh >/dev/null
args=(-count=1 -timeout 20m)
if [ "${1:-}" = "--bench" ]; then
	shift
	args+=(-run '^$' -bench . -benchtime 1x)
	export KUBAL_VM_MEM="${KUBAL_VM_MEM:-2048}" KUBAL_VM_TIMEOUT="${KUBAL_VM_TIMEOUT:-3600}"
	args=(-count=1 -timeout 60m -run '^$' -bench . -benchtime 1x)
fi
export KUBAL_REQUIRE_RIGS=1
# The kubal binary the restart test runs in the VM (static, stripped: it goes into the
# initramfs). KUBAL_VM_KUBAL=/path/to/kubal runs another build (e.g. an old one).
if [ -z "${KUBAL_VM_KUBAL:-}" ]; then
	KUBAL_VM_KUBAL="$(./integration/build-static.sh)/kubal"
	export KUBAL_VM_KUBAL
fi
exec_=(-exec "$PWD/integration/vm/vmexec")
# TestRestartWithSourceDown spends 70 s watching an idle kernel (its source outage, one
# poll a second). Unless the arguments pick tests (-run, -skip, -bench), it gets a second
# VM, booted alongside the one that runs every other test, instead of adding its 70 s at
# the end; its output follows the other VM's. The two TestForwardedProbe tests (~37 s)
# go with it: measured, the first VM ran ~130 s of tests (TestMHSameTableWhateverTheHistory
# alone 70 s) and the second ~77 s, so the stage waited on the first.
slow='^(TestRestartWithSourceDown|TestForwardedProbe|TestForwardedProbeTunnel)$'
split=1
for a in "${args[@]}" "$@"; do
	case "$a" in -run | -run=* | -test.run* | -skip | -skip=* | -test.skip* | -bench | -bench=* | -test.bench*) split=0 ;; esac
done
if [ "$split" = 0 ]; then
	CGO_ENABLED=0 go test "${args[@]}" "${exec_[@]}" ./integration/vm/... "$@"
	exit
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
CGO_ENABLED=0 go test "${args[@]}" "${exec_[@]}" -run "$slow" ./integration/vm/... "$@" >"$log" 2>&1 &
slowpid=$!
rc=0
CGO_ENABLED=0 go test "${args[@]}" "${exec_[@]}" -skip "$slow" ./integration/vm/... "$@" || rc=$?
slowrc=0
wait "$slowpid" || slowrc=$?
echo "--- $slow, in its own VM:"
cat "$log"
[ "$rc" != 0 ] && exit "$rc"
exit "$slowrc"
