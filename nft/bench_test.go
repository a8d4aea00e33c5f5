package nft

import (
	"fmt"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// BenchmarkFullSyncCompute is the compute of a full sync, without the
// kernel: resolve the cluster into the node's model, then compile the
// table. 110 local pods, dense policies (selectorstest.ScaleCluster).
func BenchmarkFullSyncCompute(b *testing.B) {
	for _, size := range []struct{ pods, policies, cnps int }{{10_000, 1_000, 0}, {100_000, 10_000, 0}, {10_000, 1_000, 100}} {
		s := selectorstest.ScaleCluster(size.pods, size.policies, 110)
		name := fmt.Sprintf("pods=%d/policies=%d", size.pods, size.policies)
		if size.cnps > 0 {
			// With ClusterNetworkPolicies next to the NetworkPolicies.
			scaleClusterPolicies(s, size.cnps)
			name += fmt.Sprintf("/cnps=%d", size.cnps)
		}
		b.Run(name, func(b *testing.B) {
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
				relabel(s, remote)
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

// relabel moves pod i of s in or out of the "api" peer sets. As in the
// agent's cache, a changed pod is a new object.
func relabel(s *selectors.State, i int) {
	p := *s.Pods[i]
	tier := "api"
	if p.Labels["tier"] == "api" {
		tier = "db"
	}
	p.Labels = map[string]string{"app": p.Labels["app"], "tier": tier}
	s.Pods[i] = &p
}

// scaleClusterPolicies adds n ClusterNetworkPolicies to a ScaleCluster
// state: half Admin, half Baseline; subjects by team (so every node has
// pods several policies select), peers by team and by tier across
// namespaces, a networks peer, ports and ranges.
func scaleClusterPolicies(s *selectors.State, n int) {
	for k := 0; k < n; k++ {
		tier := cnpv1beta1.AdminTier
		if k%2 == 1 {
			tier = cnpv1beta1.BaselineTier
		}
		team := func(i int) *metav1.LabelSelector {
			return &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", i%20)}}
		}
		actions := []cnpv1beta1.ClusterNetworkPolicyRuleAction{"Accept", "Deny", "Pass"}
		cnp := &cnpv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cnp-%d", k)},
			Spec: cnpv1beta1.ClusterNetworkPolicySpec{Tier: tier, Priority: int32(k),
				Subject: cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: team(k)},
				Ingress: []cnpv1beta1.ClusterNetworkPolicyIngressRule{
					{Action: actions[k%3], From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1beta1.NamespacedPod{
						NamespaceSelector: *team(k + 1), PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": "api"}}}}},
						Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1beta1.Port{Number: 8080}}}}},
					{Action: "Deny", From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: team(k + 2)}}},
				},
				Egress: []cnpv1beta1.ClusterNetworkPolicyEgressRule{
					{Action: "Deny", To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"169.254.169.254/32"}}}},
					{Action: actions[(k+1)%3], To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Pods: &cnpv1beta1.NamespacedPod{
						PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"tier": "db"}}}}},
						Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{{UDP: &cnpv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnpv1beta1.Port{Range: &cnpv1beta1.PortRange{Start: 5000, End: 5100}}}}}},
				}},
		}
		s.ClusterPolicies = append(s.ClusterPolicies, cnp)
	}
}

// BenchmarkOneClusterPolicyPeerChangeCompute: with 100 ClusterNetworkPolicies
// next to the NetworkPolicies, the compute of the sync after one remote
// pod moves in or out of CNP pods peers (tier api ⇄ db: the CNP peers
// "tier=api in team t(k+1)" and "tier=db everywhere"), without the kernel.
// The subject side is BenchmarkSyncClusterPolicySubjectJoin.
func BenchmarkOneClusterPolicyPeerChangeCompute(b *testing.B) {
	for _, size := range []struct{ pods, policies, cnps int }{{10_000, 1_000, 100}} {
		s := selectorstest.ScaleCluster(size.pods, size.policies, 110)
		scaleClusterPolicies(s, size.cnps)
		remote := -1
		for i, p := range s.Pods {
			if p.NodeName != selectorstest.ScaleNode && p.Labels["tier"] == "api" {
				remote = i
				break
			}
		}
		b.Run(fmt.Sprintf("pods=%d/policies=%d/cnps=%d", size.pods, size.policies, size.cnps), func(b *testing.B) {
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
				relabel(s, remote)
				m, _ := builder.Build(selectorstest.ScaleNode, s)
				desired := compiler.Compile(m)
				stats := Diff(prev, desired).Stats(desired)
				changed = stats.ElementsAdded + stats.ElementsDeleted
				prev = desired
			}
			b.ReportMetric(float64(changed), "elements-changed")
			b.ReportMetric(float64(len(prevModel.ClusterPolicies)), "local-cnps")
		})
	}
}

// BenchmarkSyncClusterPolicySubjectJoin commits, in the kernel, one local
// pod moving in and out of a ClusterNetworkPolicy subject (its verdict
// map elements change target) in a table with 100 CNPs and 1,000
// NetworkPolicies: compute, diff and a batch of a few elements.
func BenchmarkSyncClusterPolicySubjectJoin(b *testing.B) {
	s := selectorstest.ScaleCluster(10_000, 1_000, 110)
	scaleClusterPolicies(s, 100)
	local := -1
	for i, p := range s.Pods {
		if p.NodeName == selectorstest.ScaleNode {
			local = i
			break
		}
	}
	ns := testNetns(b)
	e := newTestEnforcer(b, ns, DenyDrop)
	builder := selectors.NewBuilder()
	m, _ := builder.Build(selectorstest.ScaleNode, s)
	if _, err := e.Sync(m); err != nil {
		b.Fatal(err)
	}
	orig := s.Pods[local]
	// The pod moves to a namespace of another team: other CNPs select it.
	moved := *orig
	moved.Namespace = "ns-moved"
	s.Namespaces = append(s.Namespaces, &selectors.Namespace{Name: "ns-moved", Labels: map[string]string{"team": "t19"}})
	i := 0
	var elems int
	for b.Loop() {
		i++
		s.Pods[local] = orig
		if i%2 == 1 {
			s.Pods[local] = &moved
		}
		m, _ := builder.Build(selectorstest.ScaleNode, s)
		stats, err := e.Sync(m)
		if err != nil {
			b.Fatal(err)
		}
		elems = stats.ElementsAdded + stats.ElementsDeleted
	}
	b.ReportMetric(float64(elems), "elements-changed")
}
