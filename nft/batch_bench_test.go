package nft

import (
	"net/netip"
	"testing"
)

// BenchmarkCommitOneElement is the commit alone (diff, batch, kernel) of
// one element joining a set of a 1k-chain, 10k-element table, the
// ruleset compiled outside the timer: what a one-pod sync spends after
// compute.
func BenchmarkCommitOneElement(b *testing.B) {
	e := newTestEnforcer(b, testNetns(b), DenyDrop)
	m := scaleModel(1_000, 10_000)
	if _, err := e.Sync(m); err != nil {
		b.Fatal(err)
	}
	base := len(m.AddrSets[0].Addrs)
	i := 0
	for b.Loop() {
		i++
		m.AddrSets[0].Addrs = append(m.AddrSets[0].Addrs[:base], netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}))
		b.StopTimer()
		desired := e.compiler.Compile(m)
		b.StartTimer()
		stats, err := e.Commit(desired)
		if err != nil {
			b.Fatal(err)
		}
		if stats.ElementsAdded != 1 {
			b.Fatalf("one element joining added %d", stats.ElementsAdded)
		}
	}
}
