#!/usr/bin/env bash
# Static, stripped kubal and kubalctl for the VM rigs (make test-vm, test-e2e,
# peerbench-smoke), built into one stable directory, bin/static/, with one set of flags:
# the go command then relinks only when the code changed. (Each rig used to link its own
# copy into a temporary directory with its own flags: a link of kubal is ~4 s of CPU,
# 4 links per make test.) Prints the directory's absolute path.
set -euo pipefail
cd "$(dirname "$0")/.."
out=bin/static
CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$out/" ./cmd/kubal ./cmd/kubalctl
echo "$PWD/$out"
