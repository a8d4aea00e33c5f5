// Package upstream runs the NetworkPolicy e2e suite of k8s.io/kubernetes
// ("[sig-network] Netpol", test/e2e/network/netpol), unmodified, against
// the local cluster of package cluster with the nftpol agent enforcing.
//
// It owns:
//   - build-e2e.sh, which compiles the suite and the ginkgo command from
//     the Go module proxy (the suite's sources as they are; only the entry
//     point in e2e/ is ours);
//   - Run: the ginkgo invocation (focus, the skips and their reasons, the
//     number of parallel processes) and the reading of its JSON report;
//   - the results file (Markdown) `make conformance-upstream` writes, and
//     the bounded subset `make test` runs (TestUpstreamNetpolSubset).
//
// The only specs skipped are those that need SCTP, which this kernel
// lacks (Skips says so, and every skipped spec carries its reason).
package upstream
