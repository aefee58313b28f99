#!/usr/bin/env bash
# Runs one stage of `make test` and prints how long it took, so that every CI log says
# where the time goes (the budget: under 10 min warm, 30 min cold).
set -uo pipefail
name=$1
shift
start=$(date +%s)
rc=0
"$@" || rc=$?
echo "== stage $name: $(($(date +%s) - start)) s (exit $rc)"
exit "$rc"
