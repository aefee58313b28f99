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
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "k8s-services: building static kubal and the scenario binary"
CGO_ENABLED=0 go build -ldflags='-s -w' -o "$work/" ./cmd/kubal
CGO_ENABLED=0 go test -c -ldflags='-s -w' -o "$work/k8ss.test" ./integration/k8sservices
# The test reads configs/k8s/*.yaml relative to its package directory.
cd integration/k8sservices
KUBAL_K8SS=1 KUBAL_K8SS_BIN="$work" KUBAL_REQUIRE_RIGS="${KUBAL_REQUIRE_RIGS:-1}" \
	"$work/k8ss.test" -test.v -test.count=1 -test.timeout 12m "$@"
