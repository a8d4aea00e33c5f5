package nft

import (
	"net/netip"
	"testing"
)

// BenchmarkCommitOneElement is the commit alone (diff, batch, kernel) of
// one element joining, then leaving, a set of a 1k-chain, 10k-element
// table: what a one-pod sync spends after compute. Both rulesets are
// compiled before the timer starts.
func BenchmarkCommitOneElement(b *testing.B) {
	e := newTestEnforcer(b, testNetns(b), DenyDrop)
	m := scaleModel(1_000, 10_000)
	without := e.compiler.Compile(m)
	m.AddrSets[0].Addrs = append(m.AddrSets[0].Addrs, netip.MustParseAddr("10.200.0.1"))
	with := e.compiler.Compile(m)
	if _, err := e.Commit(without); err != nil {
		b.Fatal(err)
	}
	next := []*Ruleset{with, without}
	i := 0
	for b.Loop() {
		stats, err := e.Commit(next[i%2])
		if err != nil {
			b.Fatal(err)
		}
		if stats.ElementsAdded+stats.ElementsDeleted != 1 {
			b.Fatalf("one element joining or leaving changed %d", stats.ElementsAdded+stats.ElementsDeleted)
		}
		i++
	}
}
