#!/usr/bin/env bash
# Load test of /pools/<pool> with 1,000 servers (docs/perf/api.md): builds
# perfserver, runs it in its own process with snapshot churn (health checks flipping
# servers every 10ms), and drives it with wrk from a second process. Besides wrk's
# req/s and latency it prints the CPU time each side used, so the cost per request
# can be compared on a busy machine.
# Needs wrk: apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends wrk
set -euo pipefail
cd "$(dirname "$0")/../../.."
ADDR=${ADDR:-127.0.0.1:19090}
SERVERS=${SERVERS:-1000}
DURATION=${DURATION:-20s}
CONNS=${CONNS:-8}
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install wrk)" >&2; exit 1; }
tmp=$(mktemp -d)
bin=$tmp/perfserver
go build -o "$bin" ./api/internal/perfserver
"$bin" -addr "$ADDR" -servers "$SERVERS" -churn 10ms 2>"$tmp/server.log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 50); do curl -fso /dev/null "http://$ADDR/healthz" && break; sleep 0.1; done
curl -fso /dev/null "http://$ADDR/perf/latency"
tck=$(getconf CLK_TCK)
cpu() { awk -v t="$tck" '{printf "%.2f", ($14+$15)/t}' "/proc/$pid/stat"; }

run() {
	local name=$1; shift
	echo "== $name"
	local before; before=$(cpu)
	local TIMEFORMAT='wrk cpu: %U user + %S sys seconds'
	time wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$@" | tee "$tmp/wrk.out"
	local after; after=$(cpu)
	local n; n=$(awk '/requests in/ {print $1}' "$tmp/wrk.out")
	awk -v b="$before" -v a="$after" -v n="$n" 'BEGIN {printf "server cpu: %.2f seconds for %d requests = %.1f us/request\n", a-b, n, (a-b)/n*1e6}'
	curl -fsS "http://$ADDR/perf/latency"
}
echo "== $(nproc) cores, load: $(uptime)"
run "text /pools/perf_pool" "http://$ADDR/pools/perf_pool"
run "JSON /pools/perf_pool" -H 'Accept: application/json' "http://$ADDR/pools/perf_pool"
run "JSON /pools/perf_pool/<host>" -H 'Accept: application/json' "http://$ADDR/pools/perf_pool/mw0500.eqiad.wmnet"
echo "== load after: $(uptime)"
