#!/usr/bin/env bash
# Runs every rig's setup script (each idempotent, caching under $KUBAL_CACHE).
set -euo pipefail
cd "$(dirname "$0")"
export KUBAL_CACHE="${KUBAL_CACHE:-$HOME/.cache/kubal}"
mkdir -p "$KUBAL_CACHE"
# The Kubernetes builds (kube-apiserver, kube-proxy, etcd: ~10 min of CPU cold) run
# beside the others, which mostly wait on the network (apt, debootstrap, the kernel
# package); its output is printed when it ends. Warm, every script takes a second.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
echo "== setup: k8s/setup.sh (beside the others)"
./k8s/setup.sh >"$log" 2>&1 &
k8s=$!
rc=0
for s in */setup.sh; do
	[ -x "$s" ] && [ "$s" != k8s/setup.sh ] || continue
	echo "== setup: $s"
	"./$s" || { rc=1; break; }
done
k8src=0
wait "$k8s" || k8src=$?
echo "== setup: k8s/setup.sh (exit $k8src):"
cat "$log"
[ "$k8src" = 0 ] || rc=1
exit "$rc"
