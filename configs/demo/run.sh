#!/usr/bin/env bash
# Runs the kubal demo: local backends on 127.0.0.x and kubal in dry-run mode on
# configs/demo/pybal.conf.in. Needs only Go. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir="${KUBAL_DEMO_DIR:-${TMPDIR:-/tmp}/kubal-demo}"
mkdir -p "$dir"
go build -o bin/ ./cmd/kubal ./cmd/kubalctl
go build -o bin/demo-backends ./configs/demo/backends

sed "s|@DEMO_DIR@|$dir|g" configs/demo/pybal.conf.in > "$dir/pybal.conf"
cat > "$dir/ingress-servers.json" <<'JSON'
{
  "127.0.0.11": {"enabled": true, "weight": 10},
  "127.0.0.12": {"enabled": true, "weight": 10},
  "127.0.0.13": {"enabled": true, "weight": 10}
}
JSON
cat > "$dir/api-servers" <<'LIST'
{ 'host': '127.0.0.21', 'weight': 10, 'enabled': True }
{ 'host': '127.0.0.22', 'weight': 5, 'enabled': True }
{ 'host': '127.0.0.23', 'weight': 10, 'enabled': False }
LIST
[ -f "$dir/admin-tokens" ] || { echo "demo:$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$dir/admin-tokens"; chmod 600 "$dir/admin-tokens"; }
token=$(cut -d: -f2 "$dir/admin-tokens")

./bin/demo-backends -addrs 127.0.0.11,127.0.0.12,127.0.0.13 -port 8080 -health-port 15021 -dir "$dir" &
b1=$!
./bin/demo-backends -addrs 127.0.0.21,127.0.0.22,127.0.0.23 -port 8080 -health-port 0 -dir "$dir" &
b2=$!
# The backends die of the same Ctrl-C, so kill finds them gone and wait reports
# their signal: under set -e either failure became the script's status and `make
# demo` ended with "Error 1" after a clean Ctrl-C.
trap 'kill $b1 $b2 2>/dev/null || true; wait $b1 $b2 2>/dev/null || true' EXIT

cat <<MSG

kubal demo (dry run: IPVS operations are printed as ipvsadm lines)
  pools:        curl localhost:9090/pools
  one pool:     curl localhost:9090/pools/ingress_8080
  JSON:         curl -H 'Accept: application/json' localhost:9090/pools/ingress_8080/127.0.0.11
  alerts:       curl localhost:9090/alerts
  metrics:      curl localhost:9090/metrics | grep pybal_
  fail a gateway health check:   touch $dir/down-127.0.0.12   (rm it to recover)
  admin:        KUBAL_TOKEN=$token ./bin/kubalctl status
                KUBAL_TOKEN=$token ./bin/kubalctl depool ingress_8080 127.0.0.13 --reason demo
  edit servers: $dir/ingress-servers.json (picked up within 1 s)
  Ctrl-C to stop.

MSG
./bin/kubal -n -c "$dir/pybal.conf"
