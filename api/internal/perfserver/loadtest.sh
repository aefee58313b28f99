#!/usr/bin/env bash
# Load test of /pools/<pool> with 1,000 servers (docs/perf/api.md): builds
# perfserver, runs it in its own process with snapshot churn (health checks flipping
# servers every 10ms), and drives it with wrk from a second process.
# Needs wrk: apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends wrk
set -euo pipefail
cd "$(dirname "$0")/../../.."
ADDR=${ADDR:-127.0.0.1:19090}
SERVERS=${SERVERS:-1000}
DURATION=${DURATION:-20s}
CONNS=${CONNS:-8}
command -v wrk >/dev/null || { echo "wrk not installed (apt-get install wrk)" >&2; exit 1; }
bin=$(mktemp -d)/perfserver
go build -o "$bin" ./api/internal/perfserver
"$bin" -addr "$ADDR" -servers "$SERVERS" -churn 10ms &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true; rm -rf "$(dirname "$bin")"' EXIT
for _ in $(seq 50); do curl -fso /dev/null "http://$ADDR/healthz" && break; sleep 0.1; done
echo "== load: $(uptime)"
echo "== text /pools/perf_pool"
wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://$ADDR/pools/perf_pool"
echo "== JSON /pools/perf_pool"
wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H 'Accept: application/json' "http://$ADDR/pools/perf_pool"
echo "== JSON /pools/perf_pool/<host>"
wrk -t1 -c"$CONNS" -d"$DURATION" --latency -H 'Accept: application/json' "http://$ADDR/pools/perf_pool/mw0500.eqiad.wmnet"
