#!/usr/bin/env bash
# nft for kube-proxy's nftables mode in the VM of `make test-k8s-services`: Debian's
# nftables and libnftables1 (1.0.6 on bookworm; kube-proxy needs nft >= 1.0.1), fetched
# with `apt-get download` and unpacked with `dpkg -x` (never installed on the host),
# cached under $KUBAL_CACHE/k8sservices/nftables-<version>. The test copies nft and the
# libraries ldd finds (this tree first, then the host's) into the guest. Idempotent.
set -euo pipefail
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}/k8sservices"
mkdir -p "$cache"
ver=$(apt-cache policy nftables | awk '/Candidate:/{print $2}')
if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
	echo "k8sservices setup: nftables is not in the apt lists (run apt-get update)" >&2
	exit 1
fi
dir="$cache/nftables-$ver"
if [ ! -f "$dir/.done" ]; then
	echo "k8sservices setup: fetching nftables $ver"
	rm -rf "$dir" && mkdir -p "$dir"
	tmp=$(mktemp -d)
	chmod 755 "$tmp" # apt downloads as _apt
	(cd "$tmp" && apt-get download "nftables=$ver" "libnftables1=$ver" >/dev/null)
	for d in "$tmp"/*.deb; do dpkg -x "$d" "$dir"; done
	rm -rf "$tmp"
	touch "$dir/.done"
fi
ln -sfn "nftables-$ver" "$cache/nftables"
LD_LIBRARY_PATH="$dir/usr/lib/x86_64-linux-gnu" "$dir/usr/sbin/nft" --version
if LD_LIBRARY_PATH="$dir/usr/lib/x86_64-linux-gnu" ldd "$dir/usr/sbin/nft" | grep 'not found'; then
	echo "k8sservices setup: nft needs the libraries above: apt-get install them (libnftnl11, libmnl0, libjansson4, libxtables12 on bookworm)" >&2
	exit 1
fi
