package selectors_test

import (
	"fmt"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// BenchmarkClusterPolicyChange is the compute of the agent's sync (model,
// compile, diff, and the size of the commit it plans) after one NetworkPolicy or one ClusterNetworkPolicy is
// created or deleted, at 10k pods / 1k NetworkPolicies, with and without
// 100 ClusterNetworkPolicies next to them (benchClusterPolicies): what a
// policy change costs the agent once the tiers are in use (issue 14).
func BenchmarkClusterPolicyChange(b *testing.B) {
	for _, c := range []struct {
		name   string
		cnps   int
		change string
	}{{"cnps=0/np", 0, "np"}, {"cnps=100/np", 100, "np"}, {"cnps=100/cnp", 100, "cnp"}} {
		b.Run(c.name, func(b *testing.B) {
			s := selectorstest.ScaleCluster(10_000, 1_000, 110)
			s.ClusterPolicies = benchClusterPolicies(c.cnps)
			// The changes of the e2e scale benchmark: a NetworkPolicy
			// isolating a local pod's ingress, an Admin
			// ClusterNetworkPolicy denying it ingress from every namespace.
			np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ns-0", Name: "bench-change", ResourceVersion: "1"},
				Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-0"}},
					PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
			cnp := &cnpv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "bench-change", ResourceVersion: "1"},
				Spec: cnpv1beta1.ClusterNetworkPolicySpec{Tier: cnpv1beta1.AdminTier, Priority: 0,
					Subject: cnpv1beta1.ClusterNetworkPolicySubject{Pods: &cnpv1beta1.NamespacedPod{
						NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "ns-0"}},
						PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"app": "app-0"}}}},
					Ingress: []cnpv1beta1.ClusterNetworkPolicyIngressRule{{Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
						From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}}}}
			compiler, builder, prev := syncedOnce(b, s)
			clusterPolicies := s.ClusterPolicies
			present := false
			rules, elements := 0, 0
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				present = !present
				s.ClusterPolicies = clusterPolicies
				if c.change == "np" {
					// NetworkPolicies reach the Builder as events, as in the agent.
					if present {
						builder.SetPolicy(np)
					} else {
						builder.DeletePolicy(np.Namespace, np.Name)
					}
				}
				if present && c.change == "cnp" {
					s.ClusterPolicies = append(clusterPolicies[:len(clusterPolicies):len(clusterPolicies)], cnp)
				}
				m, _ := builder.BuildFromEvents(selectorstest.ScaleNode, s)
				desired := compiler.Compile(m)
				stats := nft.Diff(prev, desired).Stats(desired)
				rules += stats.RulesWritten
				elements += stats.ElementsAdded + stats.ElementsDeleted
				prev = desired
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(time.Millisecond)/float64(b.N), "cpu-ms/op")
			// What the commit would carry: the kernel's share of a sync.
			b.ReportMetric(float64(rules)/float64(b.N), "rules-written/op")
			b.ReportMetric(float64(elements)/float64(b.N), "elements/op")
		})
	}
}

// benchClusterPolicies are n ClusterNetworkPolicies laid over ScaleCluster
// like the e2e benchmarks' mix (test/cnp_bench_test.go): Admin and
// Baseline in turn, Accept, Deny and Pass in turn, subjects whole teams of
// namespaces or pods of a tier in them, ingress from other teams and from
// pods of other teams, egress on a quarter to networks and other teams.
func benchClusterPolicies(n int) []*cnpv1beta1.ClusterNetworkPolicy {
	var out []*cnpv1beta1.ClusterNetworkPolicy
	for i := range n {
		out = append(out, benchClusterPolicy(i))
	}
	return out
}

func benchClusterPolicy(i int) *cnpv1beta1.ClusterNetworkPolicy {
	team := func(k int) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", k%20)}}
	}
	tierOf := func(k int) metav1.LabelSelector {
		return metav1.LabelSelector{MatchLabels: map[string]string{"tier": []string{"web", "api", "db"}[k%3]}}
	}
	actions := []cnpv1beta1.ClusterNetworkPolicyRuleAction{cnpv1beta1.ClusterNetworkPolicyRuleActionAccept, cnpv1beta1.ClusterNetworkPolicyRuleActionDeny, cnpv1beta1.ClusterNetworkPolicyRuleActionPass}
	c := &cnpv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bench-%02d", i), ResourceVersion: "1"},
		Spec: cnpv1beta1.ClusterNetworkPolicySpec{Tier: []cnpv1beta1.Tier{cnpv1beta1.AdminTier, cnpv1beta1.BaselineTier}[i%2], Priority: int32(10 + i)}}
	if i%3 == 0 {
		c.Spec.Subject.Pods = &cnpv1beta1.NamespacedPod{NamespaceSelector: *team(i), PodSelector: tierOf(i)}
	} else {
		c.Spec.Subject.Namespaces = team(i)
	}
	c.Spec.Ingress = []cnpv1beta1.ClusterNetworkPolicyIngressRule{
		{Action: actions[i%3], From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: team(i + 1)}}},
		{Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny, From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1beta1.NamespacedPod{NamespaceSelector: *team(i + 7), PodSelector: tierOf(i + 1)}}}},
	}
	if i%4 == 1 {
		c.Spec.Egress = []cnpv1beta1.ClusterNetworkPolicyEgressRule{
			{Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny, To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{cnpv1beta1.CIDR(fmt.Sprintf("10.253.%d.0/24", i))}}}},
			{Action: actions[(i+1)%3], To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Namespaces: team(i + 2)}}},
		}
	}
	return c
}
