#!/usr/bin/env bash
# make docs-check: starts the demo (configs/demo/run.sh, files in /tmp/kubal-demo as the
# docs show), runs every shell block of the given Markdown files that is marked
# runnable (<!-- runnable --> above the fence; see integration/docs/runblocks), and
# fails when a command's output no longer matches the doc. Needs the demo's ports
# (9090, 9091, 127.0.0.x:8080/15021) free; takes about 15 s.
set -euo pipefail
cd "$(dirname "$0")/../.."
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(README.md docs/operations.md)

export KUBAL_DEMO_DIR=/tmp/kubal-demo   # the paths the docs show
for port in 9090 9091; do
	if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
		echo "docs-check: 127.0.0.1:$port is in use (a demo already running?): stop it first" >&2
		exit 1
	fi
done
# A fresh demo: the doc's outputs assume the demo's initial servers and no overrides.
rm -rf "$KUBAL_DEMO_DIR"
go build -o bin/runblocks ./integration/docs/runblocks

log=$(mktemp)
setsid ./configs/demo/run.sh >"$log" 2>&1 &
demo=$!
stop() {
	kill -TERM -- -"$demo" 2>/dev/null || true
	wait "$demo" 2>/dev/null || true
}
trap stop EXIT

# Ready, and the monitors have spoken (the first checks spread over the 2 s interval).
for i in $(seq 1 120); do
	if curl -sf localhost:9090/readyz >/dev/null 2>&1; then break; fi
	if ! kill -0 "$demo" 2>/dev/null; then cat "$log" >&2; echo "docs-check: the demo did not start" >&2; exit 1; fi
	sleep 0.5
done
curl -sf localhost:9090/readyz >/dev/null || { cat "$log" >&2; echo "docs-check: demo not ready after 60 s" >&2; exit 1; }
sleep 3

export PATH="$PWD/bin:$PATH"
KUBAL_TOKEN=$(cut -d: -f2 "$KUBAL_DEMO_DIR/admin-tokens")
export KUBAL_TOKEN
if ! ./bin/runblocks "${files[@]}"; then
	echo "docs-check: the docs and the product differ (above); demo log: $log" >&2
	exit 1
fi
rm -f "$log"
