package test

import (
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// The ClusterNetworkPolicies the benchmarks lay over their NetworkPolicies
// (issue 14): BenchmarkPacketPath's phase T and BenchmarkScale's latencies
// with CNPs present use the same mix, placed on each bench's pods by a
// cnpMixSite.

// cnpMixPolicies is how many ClusterNetworkPolicies a mix holds.
const cnpMixPolicies = 100

// cnpMixSite says what a mix selects on one bench's cluster.
type cnpMixSite struct {
	// serverNS selects the server's namespace, serverPod the server in it.
	serverNS, serverPod *metav1.LabelSelector
	// clientNS and clientPod select the client. Only the mix's last Admin
	// policy names it: it passes the client on to the NetworkPolicy tier.
	clientNS, clientPod *metav1.LabelSelector
	// otherNS(i) selects namespaces that hold neither the server nor the
	// client; otherPod(i) pods of the server's namespace that are neither.
	otherNS, otherPod func(i int) *metav1.LabelSelector
	// ports are the client's ports to the server, for that last policy.
	ports []int32
}

// cnpMix is a mix of ClusterNetworkPolicies on one site.
type cnpMix struct {
	policies []*policyv1beta1.ClusterNetworkPolicy
	// adminOnServer is how many Admin policies select the server: the
	// policies its Admin ingress chain walks.
	adminOnServer int
}

// The subjects of the mix, in turn.
const (
	subjectServerNS  = iota // the server's namespace: selects the server
	subjectServerPod        // the server by its labels
	subjectOtherPod         // other pods of the server's namespace
	subjectOtherNS          // namespaces without the server or the client
	subjectClientNS         // the client's namespace: its egress
	subjectKinds
)

// clusterPolicyMix is the mix on site: Admin and Baseline in turn, Accept,
// Deny and Pass in turn, over the subjects above; ingress rules from other
// namespaces and other pods, some on ports and port ranges; egress rules
// (Deny to networks and other namespaces) on every client-namespace policy
// and on a quarter of the others. No rule before the last one matches the
// client's connections to the server, so a connection walks every rule of
// the policies that select the server (and, on the client's node, of
// those that select the client) and the NetworkPolicy tier decides. The
// last policy, Admin at priority 999, passes the client to that tier by
// name, as a cluster admin leaves namespaces their own policies.
func clusterPolicyMix(site cnpMixSite) cnpMix {
	var mix cnpMix
	actions := []policyv1beta1.ClusterNetworkPolicyRuleAction{cnpAccept, cnpDeny, cnpPass}
	for i := range cnpMixPolicies - 1 {
		tier := []policyv1beta1.Tier{adminTier, baseTier}[i%2]
		name := fmt.Sprintf("bench-%s-%02d", []string{"admin", "baseline"}[i%2], i)
		var c *policyv1beta1.ClusterNetworkPolicy
		kind := (i / 2) % subjectKinds
		switch kind {
		case subjectServerNS:
			c = clusterPolicy(name, tier, int32(10+i), site.serverNS)
		case subjectServerPod:
			c = clusterPolicyOnPods(name, tier, int32(10+i), site.serverNS, site.serverPod)
		case subjectOtherPod:
			c = clusterPolicyOnPods(name, tier, int32(10+i), site.serverNS, site.otherPod(i))
		case subjectOtherNS:
			c = clusterPolicy(name, tier, int32(10+i), site.otherNS(i))
		case subjectClientNS:
			c = clusterPolicy(name, tier, int32(10+i), site.clientNS)
		}
		if tier == adminTier && (kind == subjectServerNS || kind == subjectServerPod) {
			mix.adminOnServer++
		}
		in := cnpFrom(actions[i%3], fromNamespaces(site.otherNS(i+1)))
		if i%4 == 0 {
			in = inProtocols(in, protoPort("TCP", 80), protoRange("TCP", 8000, 8999))
		}
		withIngressRules(c, in)
		if i%3 != 2 {
			withIngressRules(c, cnpFrom(cnpDeny, fromPodsIn(site.serverNS, site.otherPod(i+7))))
		}
		if kind == subjectClientNS || i%4 == 1 {
			withEgressRules(c,
				cnpTo(cnpDeny, toNetworks(fmt.Sprintf("10.253.%d.0/24", i), fmt.Sprintf("fd00:253:%x::/64", i))),
				egProtocols(cnpTo(actions[(i+1)%3], toNamespaces(site.otherNS(i+2))), protoPort("TCP", 443)))
		}
		mix.policies = append(mix.policies, c)
	}
	pass := cnpFrom(cnpPass, fromPodsIn(site.clientNS, site.clientPod))
	for _, p := range site.ports {
		pass = inProtocols(pass, protoPort("TCP", p))
	}
	mix.policies = append(mix.policies, withIngressRules(
		clusterPolicyOnPods("bench-admin-pass-client", adminTier, 999, site.serverNS, site.serverPod), pass))
	mix.adminOnServer++
	return mix
}
