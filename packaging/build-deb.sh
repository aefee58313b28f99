#!/usr/bin/env bash
# `make deb`: builds bin/kubal_<version>_<arch>.deb with Debian's dpkg-deb from this
# checkout: static binaries (go build, CGO_ENABLED=0, the modules pinned in go.sum) with
# the version and commit stamped for --version, man pages from internal/mangen, the unit,
# completion, example config, alert rules and dashboard. Then lintian: no error or warning
# allowed; the overridden tag and why: packaging/debian/lintian-overrides (lintian takes
# minutes on the static binaries).
#   KUBAL_DEB_VERSION  package version (default 0.0~git<commit date>.<short commit>)
#   KUBAL_DEB_OUT      output directory (default bin/)
#   KUBAL_DEB_LINTIAN  0 skips lintian (the systemd rig's packages)
#   KUBAL_DEB_FAST     1: gzip -1 instead of dpkg-deb's default xz (the rig; saves ~10 s)
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C.UTF-8 SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}"
commit=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then commit="$commit+modified"; fi
version="${KUBAL_DEB_VERSION:-0.0~git$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y%m%d%H%M).$(git rev-parse --short=8 HEAD)}"
arch=$(dpkg --print-architecture)
out="${KUBAL_DEB_OUT:-bin}"
mkdir -p "$out"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/root"
ldflags="-s -w -buildid= -X main.version=$version -X main.commit=$commit"
CGO_ENABLED=0 GOARCH="$arch" go build -trimpath -buildvcs=false -ldflags "$ldflags" -o "$work/" ./cmd/kubal ./cmd/kubalctl

# The shipped example must stay a valid config. --check-config reads the admin token
# file as the daemon does; each host creates its own, so check with a stand-in.
(umask 077 && printf 'build:%s\n' "$(head -c 24 /dev/urandom | base64)" >"$work/admin-tokens")
sed "s#/etc/kubal/admin-tokens#$work/admin-tokens#" packaging/pybal.conf.example >"$work/example.conf"
"$work/kubal" --check-config -c "$work/example.conf" >/dev/null
install -D -m 0755 "$work/kubal" "$root/usr/sbin/kubal"
install -D -m 0755 "$work/kubalctl" "$root/usr/bin/kubalctl"
install -D -m 0644 configs/kubal.service "$root/lib/systemd/system/kubal.service"
# IPVS is a module; kubal runs without CAP_SYS_MODULE, so load it at boot.
install -d "$root/usr/lib/modules-load.d"
printf '# kubal programs IPVS over netlink and may not load modules itself.\nip_vs\n' >"$root/usr/lib/modules-load.d/kubal.conf"
install -D -m 0644 packaging/debian/default "$root/etc/default/kubal"
install -D -m 0644 packaging/kubalctl.bash "$root/usr/share/bash-completion/completions/kubalctl"
install -D -m 0644 packaging/pybal.conf.example "$root/usr/share/kubal/pybal.conf.example"
install -D -m 0644 configs/prometheus/kubal-alerts.yml "$root/usr/share/kubal/prometheus/kubal-alerts.yml"
install -D -m 0644 packaging/debian/lintian-overrides "$root/usr/share/lintian/overrides/kubal"
install -D -m 0644 configs/grafana/kubal.json "$root/usr/share/kubal/grafana/kubal.json"
for f in configs/k8s/*; do install -D -m 0644 "$f" "$root/usr/share/kubal/k8s/$(basename "$f")"; done

mkdir -p "$root/usr/share/man/man8"
go run ./internal/mangen -kubal "$work/kubal" -kubalctl "$work/kubalctl" -config docs/config.md \
	-out "$root/usr/share/man/man8" -version "$version"
gzip -9n "$root"/usr/share/man/man8/*.8

doc="$root/usr/share/doc/kubal"
install -D -m 0644 packaging/debian/copyright "$doc/copyright"
install -m 0644 README.md docs/config.md docs/operations.md "$doc/"
gzip -9n "$doc"/*.md
{
	echo "kubal ($version) unstable; urgency=medium"
	echo
	echo "  * Built from commit $commit."
	echo
	echo " -- kubal developers <kubal-dev@example.org>  $(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"

mkdir -p "$root/DEBIAN"
for s in postinst prerm postrm; do install -m 0755 "packaging/debian/$s" "$root/DEBIAN/$s"; done
echo /etc/default/kubal >"$root/DEBIAN/conffiles"
(cd "$root" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" packaging/debian/control.in >"$root/DEBIAN/control"
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
deb="$out/kubal_${version}_${arch}.deb"
dpkg-deb --root-owner-group ${KUBAL_DEB_FAST:+-Zgzip -z1} --build "$root" "$deb" >/dev/null
echo "$deb"

if [ "${KUBAL_DEB_LINTIAN:-1}" != 0 ]; then
	# Info tags seen and kept: package-contains-documentation-outside-usr-share-doc
	# (usr/share/kubal/k8s/README.md sits beside the rbac.yaml it explains).
	lintian --fail-on error,warning --display-info "$deb" >&2
fi
