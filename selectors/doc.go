// Package selectors owns the NetworkPolicy semantics: indexes of pods,
// namespaces and policies, the resolution of pod and namespace selectors,
// ipBlocks and named ports into addresses and ports, and the Model one node
// enforces. It also holds the reference evaluator, the plain reading of the
// API that tests and `nftpol explain` use as the oracle of what is allowed.
//
// It is pure Go: no I/O, no nftables. nft/ compiles the Model; controllers/
// feeds the indexes from the API server.
package selectors
