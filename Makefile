# nftpol — see README.md. Every version the build depends on is set here.
KUBERNETES_VERSION ?= v1.37.2
ETCD_VERSION       ?= v3.7.3
ENVTEST_ASSETS     ?= $(CURDIR)/.cache/envtest/k8s-$(KUBERNETES_VERSION)-etcd-$(ETCD_VERSION)

# Recipes that pipe (make bench) must fail when the command fails.
SHELL       := /bin/bash
.SHELLFLAGS := -o pipefail -c

IMG     ?= nftpol:dev
BIN     := $(CURDIR)/bin
GO      ?= go
# Tests that need the kernel run as root; packages run one at a time so the
# e2e probes (short timeouts) never compete for the two cores with a build.
TEST_FLAGS ?= -count=1 -p 1 -timeout 45m
FUZZ_TIME  ?= 20s
# The fuzzer minimizes each new input for up to 60 s by default, which took
# most of a 20 s budget here; 5 runs keep it exploring (RELIABILITY.md).
FUZZ_FLAGS ?= -fuzzminimizetime 5x

export KUBEBUILDER_ASSETS := $(ENVTEST_ASSETS)
export NFTPOL_BIN := $(BIN)/nftpol

.PHONY: all build test unit lint envtest-assets demo bench fuzz docker-build clean kind-up kind-deploy kind-try kind-down

all: build

# The version the agent logs and `nftpol version` prints.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN)/nftpol .

envtest-assets:
	bash test/envtest/build-assets.sh $(KUBERNETES_VERSION) $(ETCD_VERSION) $(ENVTEST_ASSETS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	@# go.mod and go.sum must be what `go mod tidy` makes of them.
	$(GO) mod tidy -diff

# Everything: unit, envtest, kernel and e2e tests, then a bounded fuzz run.
test: lint envtest-assets build
	$(GO) test $(TEST_FLAGS) ./...
	$(GO) test -run '^$$' -fuzz FuzzModelAgreesWithEvaluate -fuzztime $(FUZZ_TIME) $(FUZZ_FLAGS) ./selectors
	$(GO) test -run '^$$' -fuzz FuzzCompiledTablesAgreeWithEvaluate -fuzztime $(FUZZ_TIME) $(FUZZ_FLAGS) ./nft

# Only the tests that need neither root nor the control plane.
unit:
	$(GO) test -count=1 ./selectors/...

demo: envtest-assets build
	$(GO) run ./test/demo

# The benchmark suite (BENCHMARKS.md): compute, kernel commits, the agent
# at cluster scale and the packet path, then a table of figures and
# targets. BENCH_SCALE_SIZES=10000 skips the 100k-pod run (the longest).
BENCH_OUT         ?= $(CURDIR)/.cache/bench
BENCH_SCALE_SIZES ?= 10000,100000
# Agents of the fleet run (test/ BenchmarkFleet); the table's rows are those
# of 50.
BENCH_FLEET_AGENTS ?= 50
bench: envtest-assets build
	@mkdir -p $(BENCH_OUT)
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 10x ./selectors/ | tee $(BENCH_OUT)/selectors.txt
	$(GO) test -run '^$$' -bench 'FullSyncCompute|OnePodChange|Compile|Diff|Sync|Commit|Counters' -benchmem -benchtime 5x -timeout 30m ./nft/ | tee $(BENCH_OUT)/nft.txt
	$(GO) test -run '^$$' -bench 'FlowCut' -benchtime 3x -timeout 30m ./controllers/ | tee $(BENCH_OUT)/controllers.txt
	NFTPOL_SCALE_SIZES=$(BENCH_SCALE_SIZES) $(GO) test -run '^$$' -bench 'Scale|PacketPath' -benchtime 1x -timeout 90m ./test/ | tee $(BENCH_OUT)/e2e.txt
	$(GO) test -run '^$$' -bench AgentMemory -benchtime 1x ./controllers/ | tee $(BENCH_OUT)/memory.txt
	NFTPOL_FLEET_AGENTS=$(BENCH_FLEET_AGENTS) $(GO) test -run '^$$' -bench Fleet -benchtime 1x -timeout 60m ./test/ | tee $(BENCH_OUT)/fleet.txt
	@echo
	@$(GO) run ./test/benchtable $(BENCH_OUT)/selectors.txt $(BENCH_OUT)/nft.txt $(BENCH_OUT)/controllers.txt $(BENCH_OUT)/e2e.txt $(BENCH_OUT)/memory.txt $(BENCH_OUT)/fleet.txt

# Longer fuzz runs; new failing inputs land in <package>/testdata/fuzz.
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzModelAgreesWithEvaluate -fuzztime 10m $(FUZZ_FLAGS) ./selectors
	$(GO) test -run '^$$' -fuzz FuzzCompiledTablesAgreeWithEvaluate -fuzztime 10m $(FUZZ_FLAGS) ./nft

# Known bugs injected one at a time into a scratch copy of the tree: the
# property tests and fuzz targets must catch every one (RELIABILITY.md).
.PHONY: mutants
mutants:
	$(GO) run ./test/mutants -fuzztime 15s

docker-build:
	docker build --build-arg VERSION=$(VERSION) -t $(IMG) .


clean:
	rm -rf $(BIN)

# --- kind: try the agent on a local kind cluster (README, "Try it on kind").
# Needs a Docker engine, kind and kubectl. The variables are passed to the
# scripts on their command line, not exported, so no other target sees them.
KIND_CLUSTER ?= nftpol
KIND         ?= kind
KUBECTL      ?= kubectl
KIND_ENV      = KIND_CLUSTER=$(KIND_CLUSTER) KIND=$(KIND) KUBECTL=$(KUBECTL)

# Cluster with kind's own policy engine off, checked on every node.
kind-up:
	$(KIND_ENV) bash config/kind/up.sh

# Build the image, load it into the nodes, install config/default.
kind-deploy: docker-build
	$(KIND_ENV) IMG=$(IMG) bash config/kind/deploy.sh

# Real connections before and after two policies, IPv4 and IPv6.
kind-try:
	$(KIND_ENV) bash config/kind/try.sh

kind-down:
	$(KIND) delete cluster --name $(KIND_CLUSTER)

# --- A real cluster on one machine (README): kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl and agnhost from k8s.io/kubernetes and
# the CNI plugins, built from the Go module proxy next to the envtest
# control plane; test/cluster runs them with netnskubelet's kubelets.
CNI_PLUGINS_VERSION ?= v1.10.0
CLUSTER_ASSETS      ?= $(CURDIR)/.cache/cluster/k8s-$(KUBERNETES_VERSION)-cni-$(CNI_PLUGINS_VERSION)
# Extra flags for `make cluster`, e.g. CLUSTER_ARGS="-nodes 3".
CLUSTER_ARGS        ?=
export NFTPOL_CLUSTER_ASSETS := $(CLUSTER_ASSETS)

.PHONY: cluster cluster-assets

cluster-assets:
	bash test/cluster/build-assets.sh $(KUBERNETES_VERSION) $(ETCD_VERSION) $(CNI_PLUGINS_VERSION) $(CLUSTER_ASSETS)

# test/cluster's test needs them: make test builds them when missing.
test: cluster-assets

# Runs until Ctrl-C, then removes everything it created. Built first and
# run directly, so the interrupt reaches the cluster and make waits for its
# cleanup.
cluster: envtest-assets cluster-assets build
	$(GO) build -o $(BIN)/nftpol-cluster ./test/cluster/run
	$(BIN)/nftpol-cluster $(CLUSTER_ARGS)

# --- The upstream NetworkPolicy e2e suite (README, "The upstream
# NetworkPolicy e2e suite"): the [sig-network] Netpol specs of
# k8s.io/kubernetes and the ginkgo command, and the ClusterNetworkPolicy
# conformance suite of network-policy-api, built from the Go module proxy,
# run unmodified against the local cluster.
NETWORK_POLICY_API_VERSION ?= v0.3.0
UPSTREAM_SUITE ?= $(CURDIR)/.cache/upstream/k8s-$(KUBERNETES_VERSION)
CNP_SUITE      ?= $(CURDIR)/.cache/upstream/network-policy-api-$(NETWORK_POLICY_API_VERSION)
# Extra flags for `make conformance-upstream`, e.g. UPSTREAM_ARGS="-procs 3"
# or UPSTREAM_ARGS=-cnp (also the ClusterNetworkPolicy suite).
UPSTREAM_ARGS  ?=
export NFTPOL_UPSTREAM_SUITE := $(UPSTREAM_SUITE)
export NFTPOL_CNP_SUITE      := $(CNP_SUITE)

.PHONY: upstream-e2e upstream-cnp conformance-upstream

upstream-e2e:
	bash test/upstream/build-e2e.sh $(KUBERNETES_VERSION) $(ETCD_VERSION) $(UPSTREAM_SUITE)

upstream-cnp:
	bash test/upstream/build-cnp.sh $(NETWORK_POLICY_API_VERSION) $(CNP_SUITE)

# test/upstream's subset test needs it: make test builds it when missing.
test: upstream-e2e

# The whole suite (SCTP specs skipped: no SCTP in this kernel), and with
# UPSTREAM_ARGS=-cnp the ClusterNetworkPolicy one; writes
# test/upstream/RESULTS.md. Built first and run directly, so Ctrl-C
# reaches the cluster and make waits for its cleanup.
conformance-upstream: envtest-assets cluster-assets upstream-e2e upstream-cnp build
	$(GO) build -o $(BIN)/nftpol-upstream ./test/upstream/run
	$(BIN)/nftpol-upstream -results $(CURDIR)/test/upstream/RESULTS.md -kubernetes-version $(KUBERNETES_VERSION) \
		-network-policy-api-version $(NETWORK_POLICY_API_VERSION) -agent-version $(VERSION) $(UPSTREAM_ARGS)
