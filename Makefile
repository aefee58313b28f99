# kubal. `make demo` runs the daemon on the embedded demo config; `make test` runs
# every test (unit, rigs in network namespaces, the IPVS VM). See README.md.
GO       ?= go
# Test rigs (Debian packages, kube-apiserver, VM kernel) are cached outside the repo.
export KUBAL_CACHE ?= $(HOME)/.cache/kubal
BIN      := bin

.PHONY: all build demo test unit lint setup test-vm test-e2e fuzz bench clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

demo: build
	./configs/demo/run.sh

# The README's test command: lint, unit tests, rig tests (real etcd, kube-apiserver,
# BIRD2, backends in namespaces; rigs required, a missing rig fails), the IPVS VM, and
# the end-to-end ingress scenario (integration/e2e).
test: lint setup
	KUBAL_REQUIRE_RIGS=1 $(GO) test -count=1 -timeout 30m ./...
	$(MAKE) test-vm
	$(MAKE) test-e2e

unit:
	$(GO) test -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	./integration/staticcheck.sh

# Installs Debian packages and builds/fetches cached rig artifacts (idempotent).
setup:
	./integration/setup.sh

test-vm: setup
	./integration/vm/run-tests.sh

test-e2e: setup
	./integration/e2e/run.sh

fuzz:
	$(GO) test ./config -run '^$$' -fuzz FuzzParse -fuzztime 5m
	$(GO) test ./api -run '^$$' -fuzz FuzzAdmin -fuzztime 1m
	$(GO) test ./source -run '^$$' -fuzz FuzzParseList -fuzztime 1m

# In-process benchmarks; the load harnesses are in docs/perf/*.md with their commands.
bench:
	$(GO) test -run '^$$' -bench . -benchmem ./pool ./config ./api ./ipvs

clean:
	rm -rf $(BIN)

# Debian package (packaging/build-deb.sh): bin/kubal_<version>_amd64.deb, lintian clean.
.PHONY: deb test-systemd
deb:
	./packaging/build-deb.sh

# The package installed and run under a real systemd in the VM rig (integration/systemd).
test-systemd: setup
	./integration/systemd/run-tests.sh
