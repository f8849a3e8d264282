# podvisor — run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin/podvisor
# Every module of the workspace, as package patterns (events/..., shared/..., …).
MODULES := $(shell $(GO) list -m -f '{{.Path}}/...')
TEST_FLAGS ?= -count=1 -timeout 20m
# Build information stamped into the binary (podvisor version, and the log
# line and podvisor_build_info metric of every service).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
BUILD_DATE ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
BUILDINFO_PKG := github.com/podvisor/podvisor/cmd/internal/buildinfo
LDFLAGS := -X $(BUILDINFO_PKG).version=$(VERSION) -X $(BUILDINFO_PKG).commit=$(COMMIT) -X $(BUILDINFO_PKG).buildDate=$(BUILD_DATE)

.DEFAULT_GOAL := help

help: ## Show the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

build: ## Build bin/podvisor, bin/podvisord (one service per process: containers, up --replicas), bin/podvm-agent (static, runs inside guests) and bin/govc (an independent vSphere client for the tour and e2e)
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/ ./cmd/podvisor ./cmd/podvisord ./cmd/govc
	CGO_ENABLED=0 $(GO) build -o bin/podvm-agent ./agent/cmd/podvm-agent

# The guest cluster module (kube-apiserver, etcd, virtual-kubelet) stays out
# of the workspace so that its dependencies never reach the services'. Not
# yet part of build/test: its first build (all of kube-apiserver) has not
# been timed on an idle machine. Linked static with link-only flags (external
# link, -static), so that the one build runs both on this machine and in a
# guest cluster's control-plane VM, whose root holds no C library (`up` seeds
# it into the control-plane image). Compile flags stay the default ones (cgo
# on): changing them (CGO_ENABLED=0, tags) changes every kube-apiserver
# package's cache key and makes the next build a cold one of over an hour.
guest: ## Build bin/podvisor-guest, linked static (module guestcluster, outside the workspace; `make test` then runs the guest cluster test with PODVISOR_GUEST_BIN)
	cd guestcluster && GOWORK=off $(GO) build -ldflags '-linkmode=external -extldflags=-static' -o $(CURDIR)/bin/podvisor-guest ./cmd/podvisor-guest

up: build ## Start the all-in-one datacenter and every service (Ctrl-C stops it)
	./$(BIN) up $(UP_FLAGS)

test: build ## Run the unit and integration tests of every module (needs redis-server on PATH)
	PODVISOR_BIN=$(CURDIR)/$(BIN) PODVISOR_GUEST_BIN=$(wildcard $(CURDIR)/bin/podvisor-guest) $(GO) test $(TEST_FLAGS) $(MODULES)
	cd guestcluster && GOWORK=off $(GO) test $(TEST_FLAGS) ./...

# test-e2e includes the short fault-injection run (TestFaultInjection: 40 pods
# on a 3-node NATS cluster with two processes per service while processes, NATS
# nodes and vCenter fail; about 3-4 minutes, up to 11 when it waits out its
# 8-minute convergence bound; docs/fault-injection.md). make test-faults-short
# runs it alone; make test-faults runs the full one. The fault run needs the
# longer timeout (the last -timeout wins).
test-e2e: build ## Run the end-to-end suite against the built binary (the short fault-injection run included)
	cd e2e && PODVISOR_BIN=$(CURDIR)/$(BIN) $(GO) test -tags e2e $(TEST_FLAGS) -timeout 40m ./...

test-faults-short: build ## Run the short fault-injection run (40 pods, a few minutes)
	cd e2e && PODVISOR_BIN=$(CURDIR)/$(BIN) $(GO) test -tags e2e -count=1 -timeout 30m -run '^TestFaultInjection$$' -v ./...

# The full fault-injection run (docs/fault-injection.md): 1,000 pod requests,
# 100 migrations, 200 deletions and 2 drains on a 3-node NATS cluster with two
# processes per service while processes, NATS nodes and vCenter fail.
# FAULTS_FLAGS=PODVISOR_FAULTS_DURATION=30m for a soak.
FAULTS_FLAGS ?=
test-faults: build ## Run the full fault-injection run and write its table to bin/faults-report.txt
	cd e2e && PODVISOR_BIN=$(CURDIR)/$(BIN) PODVISOR_FAULTS_PODS=1000 PODVISOR_FAULTS_MIGRATIONS=100 \
		PODVISOR_FAULTS_DELETES=200 PODVISOR_FAULTS_DRAINS=2 PODVISOR_FAULTS_REPORT=$(CURDIR)/bin/faults-report.txt \
		$(FAULTS_FLAGS) $(GO) test -tags e2e -count=1 -timeout 90m -run '^TestFaultInjection$$' -v ./...

podvm-image: ## Build the pod VM boot image into bin/podvm (kernel, initramfs, bootable VMDK, OVF; needs linux-image-amd64, runc, busybox-static, e2fsprogs, syslinux, mtools)
	cd podvm && $(GO) run ./cmd/podvm-image -out $(CURDIR)/bin/podvm

bench: ## Run the Go benchmarks (ratios against in-run baselines)
	$(GO) test -run '^$$' -bench . -benchmem $(MODULES)

vet: ## go vet every module
	$(GO) vet $(MODULES)

tidy: ## go mod tidy every module
	@for m in $$($(GO) list -m -f '{{.Dir}}') $(CURDIR)/guestcluster; do (cd $$m && GOWORK=off $(GO) mod tidy) || exit 1; done

tidy-check: ## Fail when a module's go.mod or go.sum is not tidy (each module must build on its own, without go.work)
	@for m in $$($(GO) list -m -f '{{.Dir}}') $(CURDIR)/guestcluster; do (cd $$m && GOWORK=off $(GO) mod tidy -diff >/dev/null) || { echo "$$m: not tidy: run make tidy"; exit 1; }; done

.PHONY: help build guest up test test-e2e test-faults test-faults-short podvm-image bench vet tidy tidy-check
