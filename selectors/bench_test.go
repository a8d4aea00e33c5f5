package selectors_test

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// BenchmarkBuildModel resolves a whole cluster into one node's model, as
// every sync does: 110 local pods, dense policies (selectorstest.ScaleCluster).
func BenchmarkBuildModel(b *testing.B) {
	for _, size := range []struct{ pods, policies int }{{10_000, 1_000}, {100_000, 10_000}} {
		s := selectorstest.ScaleCluster(size.pods, size.policies, 110)
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size.pods, size.policies), func(b *testing.B) {
			b.ReportAllocs()
			var m *selectors.Model
			for b.Loop() {
				m, _ = selectors.BuildModel(selectorstest.ScaleNode, s)
			}
			elems := 0
			for _, set := range m.AddrSets {
				elems += len(set.Addrs) + len(set.Ranges)
			}
			b.ReportMetric(float64(len(m.Pods)), "isolated-pods")
			b.ReportMetric(float64(len(m.Policies)), "local-policies")
			b.ReportMetric(float64(elems), "peer-addrs")
		})
	}
}

// BenchmarkOnePodChangeEvent is the compute of the agent's sync after one
// pod change, fed as the agent feeds it: the informer's event for one
// remote pod (relabeled in and out of the "api" peer sets) goes to
// Builder.SetPod, then BuildFromEvents (policies and namespaces given once
// by SetPolicy and SetNamespace); "+compile" adds the nft compile and
// the diff against the last ruleset, which is the whole compute of a sync
// before the kernel commit.
func BenchmarkOnePodChangeEvent(b *testing.B) {
	for _, size := range []struct{ pods, policies int }{{10_000, 1_000}, {100_000, 10_000}} {
		s := selectorstest.ScaleCluster(size.pods, size.policies, 110)
		remote := -1
		for i, p := range s.Pods {
			if p.NodeName != selectorstest.ScaleNode && p.Labels["tier"] == "api" {
				remote = i
				break
			}
		}
		for _, compile := range []bool{false, true} {
			name := fmt.Sprintf("pods=%d/policies=%d/model", size.pods, size.policies)
			if compile {
				name += "+compile"
			}
			b.Run(name, func(b *testing.B) {
				compiler, builder, prev := syncedOnce(b, s)
				var m *selectors.Model
				changed := 0
				b.ReportAllocs()
				cpu0 := cpuTime()
				for b.Loop() {
					p := *s.Pods[remote]
					tier := "api"
					if p.Labels["tier"] == "api" {
						tier = "db"
					}
					p.Labels = map[string]string{"app": p.Labels["app"], "tier": tier}
					s.Pods[remote] = &p
					builder.SetPod(&p)
					m, _ = builder.BuildFromEvents(selectorstest.ScaleNode, s)
					if compile {
						desired := compiler.Compile(m)
						stats := nft.Diff(prev, desired).Stats(desired)
						changed = stats.ElementsAdded + stats.ElementsDeleted
						prev = desired
					}
				}
				// CPU time of the process (GC included) per change: on a
				// shared machine it moves much less than wall time.
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
				if compile {
					b.ReportMetric(float64(changed), "elements-changed")
				}
			})
		}
	}
}

// syncedOnce returns a compiler and a Builder that built and compiled s
// once, as the agent after its first sync, and that first table.
func syncedOnce(b *testing.B, s *selectors.State) (*nft.Compiler, *selectors.Builder, *nft.Ruleset) {
	compiler, err := nft.NewCompiler(nft.Config{})
	if err != nil {
		b.Fatal(err)
	}
	builder := selectors.NewBuilder()
	for _, p := range s.Pods {
		builder.SetPod(p)
	}
	for _, np := range s.Policies {
		builder.SetPolicy(np)
	}
	for _, ns := range s.Namespaces {
		builder.SetNamespace(ns)
	}
	m, _ := builder.BuildFromEvents(selectorstest.ScaleNode, s)
	return compiler, builder, compiler.Compile(m)
}

// cpuTime is the user and system CPU time the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
