#!/usr/bin/env bash
# nft for kube-proxy's nftables mode in the VM of `make test-k8s-services`: Debian's
# nftables and libnftables1 (1.0.6 on bookworm; kube-proxy needs nft >= 1.0.1), plus
# every library in their dependency closure that the host lacks (a new machine had no
# libnftnl11), fetched with `apt-get download` and unpacked with `dpkg -x` (never
# installed on the host), cached under $KUBAL_CACHE/k8sservices/nftables-<version>. The
# test copies nft and the libraries ldd finds (this tree first, then the host's) into
# the guest. Idempotent.
set -euo pipefail
cache="${KUBAL_CACHE:-$HOME/.cache/kubal}/k8sservices"
mkdir -p "$cache"
ver=$(apt-cache policy nftables | awk '/Candidate:/{print $2}')
if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
	echo "k8sservices setup: nftables is not in the apt lists (run apt-get update)" >&2
	exit 1
fi
dir="$cache/nftables-$ver"
# .done-closure: trees made before the dependency closure held nftables alone.
if [ ! -f "$dir/.done-closure" ]; then
	# The dependency closure's packages not installed here (virtual ones skipped).
	pkgs=("nftables=$ver" "libnftables1=$ver")
	while read -r p; do
		case $p in nftables | libnftables1 | "<"*) continue ;; esac
		if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
			pkgs+=("$p")
		fi
	done < <(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances nftables | grep -v '^ ' | sort -u)
	echo "k8sservices setup: fetching ${pkgs[*]}"
	rm -rf "$dir" && mkdir -p "$dir"
	tmp=$(mktemp -d)
	chmod 755 "$tmp" # apt downloads as _apt
	(cd "$tmp" && apt-get download "${pkgs[@]}" >/dev/null)
	for d in "$tmp"/*.deb; do dpkg -x "$d" "$dir"; done
	rm -rf "$tmp"
	touch "$dir/.done-closure"
fi
ln -sfn "nftables-$ver" "$cache/nftables"
LD_LIBRARY_PATH="$dir/usr/lib/x86_64-linux-gnu" "$dir/usr/sbin/nft" --version
if LD_LIBRARY_PATH="$dir/usr/lib/x86_64-linux-gnu" ldd "$dir/usr/sbin/nft" | grep 'not found'; then
	echo "k8sservices setup: nft still lacks the libraries above after fetching its dependency closure into $dir" >&2
	exit 1
fi
