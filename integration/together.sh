#!/usr/bin/env bash
# Runs each argument (a shell command line) at the same time and fails if any failed.
# The first one's output streams; the others' is printed after the first ends (each
# whole, in order). For `make test` stages that do not compete for what the other
# needs: a short host-only stage beside a long VM stage, or two VM stages with loose
# time bounds (the Makefile says which), each guest on its own core.
set -uo pipefail
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
pids=()
for i in $(seq 2 $#); do
	bash -c "${!i}" >"$dir/$i.out" 2>&1 &
	pids+=($!)
done
rc=0
bash -c "$1" || rc=1
for p in "${pids[@]}"; do
	wait "$p" || rc=1
done
for i in $(seq 2 $#); do
	cat "$dir/$i.out"
done
exit "$rc"
