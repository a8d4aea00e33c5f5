// Package nft owns the kernel side: it compiles a selectors.Model into the
// content of one nftables table (a Ruleset), diffs it against what was
// last committed, commits the difference as one netlink transaction
// through github.com/google/nftables, and reads the table back to verify
// it exactly. It never touches any other table, never runs the nft binary
// and knows nothing of Kubernetes objects.
//
// Each kind of object has one home, its encoding next to its exact
// inverse:
//
//	table.go    configuration and defaults, fixed names, derived names,
//	            kernel limits, the base chains as data, Ruleset
//	sets.go     set kinds ⇄ kernel shapes, element keys ⇄ kernel elements,
//	            element lists sized to one netlink attribute
//	rules.go    a rule ⇄ its netlink expressions (decodeRule re-encodes
//	            what it recognized and demands the same expressions)
//	compile.go  the Compiler: Model → Ruleset, pure, reusing unchanged sets
//	            and chains, applying the delta of a changed set (which
//	            Diff then takes as it is instead of comparing elements)
//	elements.go the elements of a set: a spec made by a delta shares the
//	            map of the one it came from, with a small overlay
//	unions.go   the ipBlocks of one rule merged into one interval set,
//	            and its single ports, when several, into one set
//	lookup.go   the one-lookup layout of an isolation chain: policies
//	            whose rules fit become verdict-map lookups jumping to the
//	            first allowing policy's chain
//	cluster.go  the ClusterNetworkPolicy tiers: one chain per combination
//	            of tiers, rules inline, Pass as goto
//	audit.go    policies in audit mode: base chains after ours send a
//	            pod to the hypothesis of each of its audit policies, where
//	            a deny is a would-deny count and log, then accept
//	podguard.go the guard of pod addresses: the node's pod CIDRs and known
//	            pod addresses as sets, one drop rule per base chain and
//	            family before the verdict map
//	plan.go     Diff → Plan: one list of steps drives both the netlink
//	            batch and Plan.String() in nft syntax
//	commit.go   the Enforcer: the kernel handle; commits a Ruleset in one
//	            transaction and holds no model
//	batch.go    sending that transaction with one acknowledgement, not
//	            one per message
//	verify.go   reading the table back (one dump per object type) and the
//	            exact comparison; anything unrecognized is drift, never
//	            an error or a panic
//	nfttext.go  a Ruleset as `nft -f` input and as the `nftpol dump` text
//	counters.go policy counters from one rule dump, monotonic
//	nflog.go    the denied-packet log (NFLOG)
//
// Tests: golden tables and commit plans under testdata/ (go test ./nft
// -run 'Golden|Batch' -update rewrites them), round trips of every
// encoding, an interpreter of the exact expressions against the reference
// evaluator, and kernel tests in network namespaces of their own.
package nft
