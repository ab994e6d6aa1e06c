# nsmfwd — Network Service Mesh forwarder. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
GOLANGCI_LINT_VERSION := v2.7.2
ACTIONLINT_VERSION := v1.7.7
# Privileged tests compare machine-wide BPF program and link sets before and
# after, so test packages run one at a time.
TEST_FLAGS ?= -race -count=1 -p 1

.DEFAULT_GOAL := help
.PHONY: help build test test-interop test-vpp test-vm demo generate generate-check lint bench
.PHONY: image validate lint-workflows

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build nsmfwd, nsmctl and nse into ./bin
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

test: ## run every test (main module, then test/interop); as root this includes the privileged namespace/eBPF tests
	$(GO) test $(TEST_FLAGS) ./...
	$(MAKE) --no-print-directory test-interop

test-interop: ## (root) nsmfwd as the forwarder of NSM sdk's own registry, NSMgr, NSE and NSC (own module, test/interop)
	cd test/interop && $(GO) test $(TEST_FLAGS) ./...

test-vpp: ## VPP tier alone: the VPP dataplane's tests, the conformance suite and e2e against a real VPP (VPP_BIN, or vpp on PATH; fails without one)
	@command -v "$${VPP_BIN:-vpp}" >/dev/null || { echo "make test-vpp: set VPP_BIN or put vpp on PATH" >&2; exit 1; }
	$(GO) test -count=1 -p 1 ./vppapi/ ./test/conformance/ ./test/e2e/

test-vm: ## guest-VM tier alone: SR-IOV on QEMU's emulated igb (real VFs, VFIO), the SR-IOV conformance suite and kernel WireGuard in a Debian 6.12 guest (part of make test; needs qemu-system-x86 >= 8 and a 6.12 kernel package)
	$(GO) test -count=1 -v -timeout 60m -run TestGuestVM ./test/vm/

demo: build ## (root) connect a client to an endpoint (kernel/eBPF, or VPP when VPP_BIN or vpp is present), ping, close, show nothing is left
	@bash deployments/demo/demo.sh $(BIN)

bench: build ## (root) benchmark the dataplanes and the control plane into bench/results, and VPP's memory and idle CPU (BENCH_QUICK=1: brief, for CI)
	$(GO) build -o $(BIN)/nsmbench ./bench/cmd/nsmbench
	$(BIN)/nsmbench -bin $(BIN) -out bench/results
	@$(GO) test -run '^$$' -bench 'VPPMemory|VPPScheduling' -benchtime 1x ./vppapi/ > bench/results/vpp-node.txt; s=$$?; cat bench/results/vpp-node.txt; exit $$s

generate: ## regenerate the eBPF objects with bpf2go (needs clang, llvm, libbpf-dev)
	$(GO) generate ./ebpf/...

generate-check: generate ## fail if the committed eBPF objects differ from what `make generate` produces
	@git diff --exit-code --stat -- ebpf/ || { echo "generated eBPF objects are stale: run make generate and commit"; exit 1; }

lint: lint-workflows ## golangci-lint and actionlint (pinned, run through go run; not in go.mod), and every module's go.mod tidy
	@for m in . test/interop deployments/validate; do (cd $$m && $(GO) mod tidy -diff >/dev/null) || { echo "$$m: go.mod/go.sum not tidy: run go mod tidy there (test/interop follows the main module's requirements)"; exit 1; }; done
	$(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run ./...
	cd test/interop && $(GO) run github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) run ./...

lint-workflows: ## actionlint on .github/workflows (pinned; checks run: scripts with shellcheck when it is installed)
	$(GO) run github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION) -no-color

IMAGE ?= ghcr.io/nsmfwd/nsmfwd:dev
VPP_VERSION ?=
image: ## build the image from deployments/Dockerfile with docker, podman or buildah (IMAGE=name:tag, VPP_VERSION=base tag)
	@set -e; \
	if command -v docker >/dev/null && docker info >/dev/null 2>&1; then build="docker build"; \
	elif command -v podman >/dev/null && podman info >/dev/null 2>&1; then build="podman build"; \
	elif command -v buildah >/dev/null; then build="buildah build"; \
	else echo "make image: no container engine available (need a running docker daemon, podman or buildah)" >&2; exit 1; fi; \
	set -x; $$build -f deployments/Dockerfile -t $(IMAGE) $(if $(VPP_VERSION),--build-arg VPP_VERSION=$(VPP_VERSION)) .

validate: ## render the k8s overlays and check them strictly against the Kubernetes API types; check the Grafana dashboard and Dockerfile pins
	cd deployments/validate && $(GO) test -count=1 ./...
