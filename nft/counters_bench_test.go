package nft

import (
	"testing"

	"github.com/google/nftables"
)

// BenchmarkCounters is one metrics scrape's kernel read with 1k policy
// chains: Counters (one rule dump of the table) against reading the rules
// chain by chain, which is what a scrape did before.
func BenchmarkCounters(b *testing.B) {
	ns := testNetns(b)
	e := newTestEnforcer(b, ns, DenyDrop)
	if _, err := e.Sync(scaleModel(1_000, 10_000)); err != nil {
		b.Fatal(err)
	}
	b.Run("one-dump", func(b *testing.B) {
		for b.Loop() {
			if _, err := e.Counters(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("per-chain", func(b *testing.B) {
		for b.Loop() {
			c, err := e.readConn()
			if err != nil {
				b.Fatal(err)
			}
			for _, name := range e.committed.sortedChainNames() {
				if len(e.committed.chains[name].policies) == 0 {
					continue
				}
				if _, err := c.GetRules(e.table, &nftables.Chain{Name: name, Table: e.table}); err != nil {
					b.Fatal(err)
				}
			}
			_ = c.CloseLasting()
		}
	})
}
