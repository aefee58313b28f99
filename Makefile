# kubal. `make demo` runs the daemon on the embedded demo config; `make test` runs
# every test (unit, rigs in network namespaces, the IPVS VM). See README.md.
GO       ?= go
# Test rigs (Debian packages, kube-apiserver, VM kernel) are cached outside the repo.
export KUBAL_CACHE ?= $(HOME)/.cache/kubal
# -trimpath keeps the checkout's directory out of the build cache's keys: a clean
# clone (CI) then reuses what any other checkout compiled, instead of compiling every
# kubal package again for vet, staticcheck, go test and the rigs' static builds
# (measured in a fresh clone with warm caches: go vet 22.7 -> 1.9 s, staticcheck
# 35 -> 1.6 s, compiling every test binary 52 -> 36 s).
export GOFLAGS += -trimpath
# Static, pure-Go builds everywhere, as the package and the VM rigs need: one compile of
# every dependency serves lint, go test and the rigs (with cgo on for the host, a new
# machine compiled everything twice; test-vm took 312 s cold against 135 s warm).
export CGO_ENABLED ?= 0
BIN      := bin

.PHONY: all build demo test unit lint setup test-vm test-e2e test-ecmp test-k8s-services fuzz docs-check bench clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

demo: build
	./configs/demo/run.sh

# The README's test command: lint, unit tests, rig tests (real etcd, kube-apiserver,
# BIRD2, backends in namespaces; rigs required, a missing rig fails), the IPVS VM, the
# end-to-end ingress scenario (integration/e2e), the active-active ECMP rig
# (integration/ecmp), Kubernetes-declared services with real kube-proxy
# (integration/k8sservices), the Debian package under systemd, the
# keepalived peer benchmark's smoke run, and the docs check. The VM stages run one after
# the other: several TCG guests on 2 cores would starve their timing assertions. The
# exception is the last pair, test-systemd and peerbench-smoke: their bounds are seconds
# to a minute (the smoke run's numbers are only a smoke test; `make peerbench` measures
# alone), and side by side they take ~180 s instead of ~240 s.
# -p 4: most packages' tests wait (rigs, monitors, timeouts; ~30% CPU at -p 2), so 4 at
# a time on 2 cores; the daemon package (~100 s) is then the critical path.
# Setup runs once, first, beside lint (each rig target depends on it only when run
# alone; cold, setup waits on the network and the Kubernetes builds while lint compiles),
# and the host-only docs-check runs beside the last VM stages.
test:
	./integration/together.sh "./integration/stage.sh setup $(MAKE) setup" "./integration/stage.sh lint $(MAKE) lint"
	./integration/stage.sh go-test env KUBAL_REQUIRE_RIGS=1 $(GO) test -p 4 -count=1 -timeout 30m ./...
	./integration/stage.sh test-vm $(MAKE) test-vm SETUP_DONE=1
	./integration/stage.sh test-e2e $(MAKE) test-e2e SETUP_DONE=1
	./integration/stage.sh test-ecmp $(MAKE) test-ecmp SETUP_DONE=1
	./integration/stage.sh test-k8s-services $(MAKE) test-k8s-services SETUP_DONE=1
	./integration/together.sh "./integration/stage.sh test-systemd $(MAKE) test-systemd SETUP_DONE=1" \
		"./integration/stage.sh peerbench-smoke $(MAKE) peerbench-smoke SETUP_DONE=1" \
		"./integration/stage.sh docs-check $(MAKE) docs-check"

unit:
	$(GO) test -count=1 ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	$(GO) vet ./...
	./integration/staticcheck.sh

# Installs Debian packages and builds/fetches cached rig artifacts (idempotent).
# SETUP_DONE=1 (set by `test`, which ran it): the rig targets below skip it.
SETUP := $(if $(SETUP_DONE),,setup)
setup:
	./integration/setup.sh

test-vm: $(SETUP)
	./integration/vm/run-tests.sh

test-e2e: $(SETUP)
	./integration/e2e/run.sh

# Active-active directors (issue 18): 3 kubal directors behind BIRD2 ECMP with BFD in the
# VM, ~2 min; KUBAL_ECMP_HOLD/CONNS/INTERVAL_MS/FLOWS for longer runs (integration/ecmp).
test-ecmp: $(SETUP)
	./integration/ecmp/run.sh

# Kubernetes-declared services ([k8s-services]) end to end: kube-apiserver on the host,
# kubal + BIRD2 + three nodes each with a real kube-proxy (nftables) in the IPVS VM.
test-k8s-services: $(SETUP)
	./integration/k8sservices/run.sh

# Every parser of outside input, plus the daemon model (random operation sequences):
# FUZZTIME each (default 5m; `make fuzz FUZZTIME=1m` for a quick pass).
FUZZTIME ?= 5m
fuzz:
	$(GO) test ./config     -run '^$$' -fuzz '^FuzzParse$$'            -fuzztime $(FUZZTIME)
	$(GO) test ./source     -run '^$$' -fuzz '^FuzzParseList$$'        -fuzztime $(FUZZTIME)
	$(GO) test ./adminstate -run '^$$' -fuzz '^FuzzOpen$$'             -fuzztime $(FUZZTIME)
	$(GO) test ./api        -run '^$$' -fuzz '^FuzzAdmin$$'            -fuzztime $(FUZZTIME)
	$(GO) test ./api        -run '^$$' -fuzz '^FuzzReadPaths$$'        -fuzztime $(FUZZTIME)
	$(GO) test ./conftool   -run '^$$' -fuzz '^FuzzDecodeEntry$$'      -fuzztime $(FUZZTIME)
	$(GO) test ./k8ssource  -run '^$$' -fuzz '^FuzzWeightAnnotation$$' -fuzztime $(FUZZTIME)
	$(GO) test ./k8ssource  -run '^$$' -fuzz '^FuzzAnnotations$$'      -fuzztime $(FUZZTIME)
	$(GO) test ./bgp        -run '^$$' -fuzz '^FuzzConfigAcceptedByNew$$' -fuzztime $(FUZZTIME)
	$(GO) test ./daemon     -run '^$$' -fuzz '^FuzzModel$$'            -fuzztime $(FUZZTIME)

# Runs the shell blocks of README.md and docs/operations.md marked runnable against
# the demo and fails when their output differs from what the doc shows.
docs-check: build
	./integration/docs/check.sh README.md docs/operations.md

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
test-systemd: $(SETUP)
	./integration/systemd/run-tests.sh

# kubal vs keepalived on real IPVS in the VM rig (integration/peerbench, docs/perf/peers.md):
# the full benchmark (~13 min of TCG time) and its smoke version (~2 min).
.PHONY: peerbench peerbench-smoke
peerbench: $(SETUP)
	./integration/peerbench/run.sh --full

peerbench-smoke: $(SETUP)
	./integration/peerbench/run.sh
