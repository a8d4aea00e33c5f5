package nft

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

type commitSize struct {
	name          string
	chains, elems int
}

// commitSizes are the tables the commit benchmarks load.
func commitSizes() []commitSize {
	return []commitSize{
		{"1k-chains-10k-elems", 1_000, 10_000},
		{"10k-chains-100k-elems", 10_000, 100_000},
	}
}

// BenchmarkCommitNetlink is our full commit (compile, one netlink batch)
// into a namespace without our table, every iteration. Compare with
// BenchmarkCommitNftFile, which commits the same table with `nft -f`.
func BenchmarkCommitNetlink(b *testing.B) {
	for _, size := range commitSizes() {
		b.Run(size.name, func(b *testing.B) {
			ns := testNetns(b)
			e := newTestEnforcer(b, ns, DenyDrop)
			m := scaleModel(size.chains, size.elems)
			var stats CommitStats
			for b.Loop() {
				b.StopTimer()
				// Also forgets the committed table: the Sync is a full one.
				if err := e.DeleteTable(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				var err error
				if stats, err = e.Sync(m); err != nil {
					b.Fatal(err)
				}
			}
			if !stats.Full {
				b.Fatal("the commit was not a full one")
			}
			b.ReportMetric(float64(stats.Chains), "chains")
			b.ReportMetric(float64(stats.Elements), "elements")
		})
	}
}

// BenchmarkCommitNftFile loads NftText of the same tables with
// `ip netns exec NS nft -f FILE` into a namespace without our table, every
// iteration. The time includes starting ip and nft; the "empty"
// sub-benchmark, a one-line table, shows that fixed cost.
func BenchmarkCommitNftFile(b *testing.B) {
	type load struct {
		name          string
		text          string
		chains, elems int
	}
	loads := []load{{name: "empty", text: "table inet nftpol {}\n"}}
	for _, size := range commitSizes() {
		rs := Compile(scaleModel(size.chains, size.elems), Config{Table: "nftpol", Deny: DenyDrop})
		chains, _, _, elems := rs.Counts()
		loads = append(loads, load{size.name, rs.NftText(), chains, elems})
	}
	for _, l := range loads {
		b.Run(l.name, func(b *testing.B) {
			ns := testNetns(b)
			e := newTestEnforcer(b, ns, DenyDrop)
			file := filepath.Join(b.TempDir(), "table.nft")
			if err := os.WriteFile(file, []byte(l.text), 0o600); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				b.StopTimer()
				if err := e.DeleteTable(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if out, err := exec.Command("ip", "netns", "exec", filepath.Base(ns), "nft", "-f", file).CombinedOutput(); err != nil {
					b.Fatalf("nft -f: %v: %s", err, out)
				}
			}
			b.ReportMetric(float64(l.chains), "chains")
			b.ReportMetric(float64(l.elems), "elements")
		})
	}
}
