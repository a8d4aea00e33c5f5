package nft

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

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
	for _, fitting := range []bool{false, true} {
		s := selectorstest.ScaleCluster(10_000, 1_000, 110)
		cluster := "scale"
		if fitting {
			fitLookupShapes(s)
			cluster = "scale-fitting"
		}
		benchmarkPodChange(b, s, cluster)
	}
}

// fitLookupShapes rewrites the policies of a ScaleCluster so that every
// rule fits a lookup shape, with the same peers: the named port becomes
// its number, the ipBlock rule allows every port, the DNS rule goes to
// the team's namespaces. Its pods then hold lookup maps of pod peers.
func fitLookupShapes(s *selectors.State) {
	p8080 := intstr.FromInt32(8080)
	for i, np := range s.Policies {
		np = np.DeepCopy()
		if len(np.Spec.Ingress) == 3 {
			np.Spec.Ingress[0].Ports = []networkingv1.NetworkPolicyPort{{Port: &p8080}}
			np.Spec.Ingress[2].Ports = nil
		}
		if len(np.Spec.Egress) == 2 {
			np.Spec.Egress[1].To = np.Spec.Egress[0].To
		}
		s.Policies[i] = np
	}
}

func benchmarkPodChange(b *testing.B, s *selectors.State, cluster string) {
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
		b.Run(fmt.Sprintf("%s/pods=10000/layout=%s", cluster, layout.name), func(b *testing.B) {
			ns := testNetns(b)
			node := newTestNode(b, Config{Table: "nftpol", NetNSPath: ns, Deny: DenyDrop, LookupMinPolicies: layout.min})
			builder := selectors.NewBuilder()
			m, _ := builder.Build(selectorstest.ScaleNode, s)
			full, err := node.Sync(m)
			if err != nil {
				b.Fatal(err)
			}
			chains, rules, sets, elems := node.compiler.prev.Counts()
			var changed int
			cpu := cpuTime()
			n := 0
			for b.Loop() {
				n++
				relabel(s, remote)
				m, _ := builder.Build(selectorstest.ScaleNode, s)
				stats, err := node.Sync(m)
				if err != nil {
					b.Fatal(err)
				}
				changed = stats.ElementsAdded + stats.ElementsDeleted
			}
			// The machine is shared: CPU time (user and system, the
			// kernel's commit included) says more than wall time.
			b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/1000/float64(n), "cpu-ms/op")
			b.ReportMetric(float64(changed), "elements-changed")
			b.ReportMetric(float64(chains), "chains")
			b.ReportMetric(float64(rules), "rules")
			b.ReportMetric(float64(sets), "sets")
			b.ReportMetric(float64(elems), "elements")
			b.ReportMetric(float64(full.Duration.Milliseconds()), "full-commit-ms")
		})
	}
}

// cpuTime is the user and system CPU time of the process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
