#!/usr/bin/env bash
# Builds the rig binaries for the k8s source tests and caches them outside the repo,
# keyed by version (idempotent: a cached binary is reused):
#   $KUBAL_CACHE/k8s/kube-apiserver-v1.36.3   from the apiserver-build tools module
#   $KUBAL_CACHE/k8s/kube-proxy-v1.36.3       from the same module (same pinned k8s.io/kubernetes;
#                                             run in the VM by integration/k8sservices)
#   $KUBAL_CACHE/k8s/etcd-v3.6.16             an embed etcd server from kubal's own module graph
# Needs only Go and the module proxy. The kube-apiserver build takes ~5.5 min and
# ~1.9 GB RAM cold; kube-proxy a few minutes more.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}/k8s"
k8s_version=v1.36.3
etcd_version=v3.6.16
mkdir -p "$cache"

# build_k8s_cmd NAME OUT: k8s.io/kubernetes/cmd/NAME at $k8s_version, static, into OUT.
build_k8s_cmd() {
	local name="$1" out="$2"
	echo "building $name $k8s_version into $out (takes minutes)"
	local pkg=k8s.io/component-base/version
	local ldflags="-s -w -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=36"
	ldflags="$ldflags -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
	tmp="$out.tmp.$$"
	trap 'rm -f "$tmp"' EXIT
	# go.sum is committed; -mod=mod so a stray vendor dir cannot interfere, no VCS
	# stamping (it fails on checkouts git considers unsafe).
	(cd "$here/apiserver-build" && GOFLAGS="-mod=mod -buildvcs=false" CGO_ENABLED=0 \
		go build -trimpath -ldflags "$ldflags" -o "$tmp" "k8s.io/kubernetes/cmd/$name")
	mv "$tmp" "$out"
	trap - EXIT
}

apiserver="$cache/kube-apiserver-$k8s_version"
[ -x "$apiserver" ] || build_k8s_cmd kube-apiserver "$apiserver"
"$apiserver" --version
proxy="$cache/kube-proxy-$k8s_version"
[ -x "$proxy" ] || build_k8s_cmd kube-proxy "$proxy"
"$proxy" --version

# rig.go names the same versions; the etcd one must be kubal's go.mod pin.
pinned=$(cd "$root" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
if [ "$pinned" != "$etcd_version" ]; then
	echo "go.mod pins etcd server $pinned, setup.sh and integration/k8s/rig.go expect $etcd_version: update both" >&2
	exit 1
fi
etcd="$cache/etcd-$etcd_version"
if [ ! -x "$etcd" ]; then
	echo "building etcd $etcd_version into $etcd"
	tmp="$etcd.tmp.$$"
	trap 'rm -f "$tmp"' EXIT
	(cd "$root" && GOFLAGS=-buildvcs=false go build -trimpath -o "$tmp" ./integration/k8s/etcd)
	mv "$tmp" "$etcd"
	trap - EXIT
fi
"$etcd" -version
