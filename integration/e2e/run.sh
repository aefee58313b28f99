#!/usr/bin/env bash
# `make test-e2e`: kubal's end-to-end ingress scenario (see doc.go and README.md).
# Idempotent and self-contained: runs the VM and k8s rig setup scripts (cached under
# $KUBAL_CACHE) and integration/bgp/setup.sh (BIRD2, tc: copied into the VM), builds static
# kubal, kubalctl and the scenario binary, and runs the scenario: etcd + kube-apiserver
# on the host, everything network-facing in a qemu VM with real IPVS.
# Extra arguments go to the test binary (e.g. -test.v is always on).
set -euo pipefail
cd "$(dirname "$0")/../.."
# The VM (kernel, base initramfs, qemu, cpio), kube-apiserver + etcd, BIRD2 + tc (pinned).
./integration/vm/setup.sh
./integration/k8s/setup.sh
./integration/bgp/setup.sh
echo "e2e: building static kubal, kubalctl and the scenario binary"
# Into bin/static (integration/build-static.sh): stable paths, relinked only on change.
bin=$(./integration/build-static.sh)
CGO_ENABLED=0 go test -c -ldflags='-s -w' -o "$bin/e2e.test" ./integration/e2e
# The test reads configs/k8s/rbac.yaml relative to its package directory.
cd integration/e2e
KUBAL_E2E=1 KUBAL_E2E_BIN="$bin" KUBAL_REQUIRE_RIGS="${KUBAL_REQUIRE_RIGS:-1}" \
	"$bin/e2e.test" -test.v -test.count=1 -test.timeout 12m "$@"
