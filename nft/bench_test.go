package nft

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// BenchmarkFullSyncCompute is the compute of a full sync, without the
// kernel: resolve the cluster into the node's model, then compile the
// table. 110 local pods, dense policies (selectorstest.ScaleCluster).
func BenchmarkFullSyncCompute(b *testing.B) {
	for _, size := range []struct{ pods, policies int }{{10_000, 1_000}, {100_000, 10_000}} {
		s := selectorstest.ScaleCluster(size.pods, size.policies, 110)
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size.pods, size.policies), func(b *testing.B) {
			b.ReportAllocs()
			var rs *Ruleset
			for b.Loop() {
				m, _ := selectors.BuildModel(selectorstest.ScaleNode, s)
				rs = Compile(m, Config{})
			}
			chains, rules, sets, elems := rs.Counts()
			b.ReportMetric(float64(chains), "chains")
			b.ReportMetric(float64(rules), "rules")
			b.ReportMetric(float64(sets), "sets")
			b.ReportMetric(float64(elems), "elements")
		})
	}
}

// BenchmarkCompile compiles a node with 5k isolated pods and 5k policies
// over 100k peer addresses (no kernel).
func BenchmarkCompile(b *testing.B) {
	m := scaleModel(10_000, 100_000)
	b.ReportAllocs()
	for b.Loop() {
		Compile(m, Config{})
	}
}

// BenchmarkDiffPodJoin diffs two compiled tables that differ by one peer.
func BenchmarkDiffPodJoin(b *testing.B) {
	m := scaleModel(10_000, 100_000)
	before := Compile(m, Config{})
	m.AddrSets[0].Addrs = append(m.AddrSets[0].Addrs, netip.MustParseAddr("10.200.0.1"))
	after := Compile(m, Config{})
	b.ReportAllocs()
	for b.Loop() {
		Diff(before, after)
	}
}

// BenchmarkSyncFull commits 10k chains and 100k elements as one batch.
func BenchmarkSyncFull(b *testing.B) {
	ns := testNetns(b)
	e := newTestEnforcer(b, ns, DenyDrop)
	m := scaleModel(10_000, 100_000)
	for b.Loop() {
		e.Invalidate()
		if _, err := e.Sync(m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSyncPodJoin commits one peer joining a set in a 100k-element
// table: compile, diff and a one-element batch.
func BenchmarkSyncPodJoin(b *testing.B) {
	ns := testNetns(b)
	e := newTestEnforcer(b, ns, DenyDrop)
	m := scaleModel(10_000, 100_000)
	if _, err := e.Sync(m); err != nil {
		b.Fatal(err)
	}
	base := len(m.AddrSets[0].Addrs)
	i := 0
	for b.Loop() {
		i++
		m.AddrSets[0].Addrs = append(m.AddrSets[0].Addrs[:base], netip.AddrFrom4([4]byte{10, 200, byte(i >> 8), byte(i)}))
		stats, err := e.Sync(m)
		if err != nil {
			b.Fatal(err)
		}
		if stats.ElementsAdded != 1 {
			b.Fatalf("a pod join added %d elements", stats.ElementsAdded)
		}
	}
}

// BenchmarkOnePodChangeCompute is the compute of the sync that follows
// one pod change (a remote pod relabeled in and out of peer sets), without
// the kernel, as the agent's syncs do it: the Builder resolves again only
// the peers of the pod's namespace, then only the changed sets are
// compiled and compared.
func BenchmarkOnePodChangeCompute(b *testing.B) {
	for _, size := range []struct{ pods, policies int }{{10_000, 1_000}, {100_000, 10_000}} {
		s := selectorstest.ScaleCluster(size.pods, size.policies, 110)
		remote := -1
		for i, p := range s.Pods {
			if p.NodeName != selectorstest.ScaleNode && p.Labels["tier"] == "api" {
				remote = i
				break
			}
		}
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size.pods, size.policies), func(b *testing.B) {
			compiler, err := NewCompiler(Config{})
			if err != nil {
				b.Fatal(err)
			}
			builder := selectors.NewBuilder()
			prevModel, _ := builder.Build(selectorstest.ScaleNode, s)
			prev := compiler.Compile(prevModel)
			var changed int
			b.ReportAllocs()
			for b.Loop() {
				// As in the agent's cache, a changed pod is a new object;
				// it moves in or out of the "api" peer sets every time.
				p := *s.Pods[remote]
				tier := "api"
				if p.Labels["tier"] == "api" {
					tier = "db"
				}
				p.Labels = map[string]string{"app": p.Labels["app"], "tier": tier}
				s.Pods[remote] = &p
				m, _ := builder.Build(selectorstest.ScaleNode, s)
				desired := compiler.Compile(m)
				stats := Diff(prev, desired).Stats(desired)
				changed = stats.ElementsAdded + stats.ElementsDeleted
				prev = desired
			}
			b.ReportMetric(float64(changed), "elements-changed")
		})
	}
}
