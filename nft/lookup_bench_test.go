package nft

import (
	"fmt"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// BenchmarkLookupPodChange commits the table of a 10k-pod cluster
// (selectorstest.ScaleCluster, 1k policies, 110 local pods) in each
// layout of the isolation chains, then one remote pod change after
// another (relabeled in and out of the "api" peer sets), as the agent
// syncs: build, compile, diff, commit. It reports the full table, the
// elements one change sends and, as ns/op, the whole sync with its kernel
// commit. "walk" is the default threshold (lookup.go), "lookup" puts every
// isolation chain in the lookup layout: the most elements a change can
// cost in that cluster.
func BenchmarkLookupPodChange(b *testing.B) {
	s := selectorstest.ScaleCluster(10_000, 1_000, 110)
	remote := -1
	for i, p := range s.Pods {
		if p.NodeName != selectorstest.ScaleNode && p.Labels["tier"] == "api" {
			remote = i
			break
		}
	}
	for _, layout := range []struct {
		name string
		min  int
	}{{"walk", 0}, {"lookup", 1}} {
		b.Run(fmt.Sprintf("pods=10000/layout=%s", layout.name), func(b *testing.B) {
			ns := testNetns(b)
			node := newTestNode(b, Config{Table: "nftpol", NetNSPath: ns, Deny: DenyDrop, LookupMinPolicies: layout.min})
			builder := selectors.NewBuilder()
			m, _ := builder.Build(selectorstest.ScaleNode, s)
			if _, err := node.Sync(m); err != nil {
				b.Fatal(err)
			}
			chains, rules, sets, elems := node.compiler.prev.Counts()
			var changed int
			for b.Loop() {
				relabel(s, remote)
				m, _ := builder.Build(selectorstest.ScaleNode, s)
				stats, err := node.Sync(m)
				if err != nil {
					b.Fatal(err)
				}
				changed = stats.ElementsAdded + stats.ElementsDeleted
			}
			b.ReportMetric(float64(changed), "elements-changed")
			b.ReportMetric(float64(chains), "chains")
			b.ReportMetric(float64(rules), "rules")
			b.ReportMetric(float64(sets), "sets")
			b.ReportMetric(float64(elems), "elements")
		})
	}
}
