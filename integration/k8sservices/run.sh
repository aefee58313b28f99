#!/usr/bin/env bash
# `make test-k8s-services`: Kubernetes-declared LVS services with real kube-proxy (see
# README.md). Idempotent and self-contained: runs the VM, k8s (kube-apiserver, etcd,
# kube-proxy), BGP (BIRD2) and nftables setup scripts (cached under $KUBAL_CACHE),
# builds static kubal and the scenario binary, and runs the scenario: kube-apiserver
# on the host, everything network-facing in a qemu VM with real IPVS.
# Extra arguments go to the test binary.
set -euo pipefail
cd "$(dirname "$0")/../.."
./integration/vm/setup.sh
./integration/k8s/setup.sh
./integration/bgp/setup.sh
./integration/k8sservices/setup.sh
echo "k8s-services: building static kubal and the scenario binary"
# Into bin/static (integration/build-static.sh): stable paths, relinked only on change.
bin=$(./integration/build-static.sh)
CGO_ENABLED=0 go test -c -ldflags='-s -w' -o "$bin/k8ss.test" ./integration/k8sservices
# The test reads configs/k8s/*.yaml relative to its package directory.
cd integration/k8sservices
KUBAL_K8SS=1 KUBAL_K8SS_BIN="$bin" KUBAL_REQUIRE_RIGS="${KUBAL_REQUIRE_RIGS:-1}" \
	"$bin/k8ss.test" -test.v -test.count=1 -test.timeout 12m "$@"
