package reference

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

const (
	accept = policyv1beta1.ClusterNetworkPolicyRuleActionAccept
	deny   = policyv1beta1.ClusterNetworkPolicyRuleActionDeny
	pass   = policyv1beta1.ClusterNetworkPolicyRuleActionPass
	admin  = policyv1beta1.AdminTier
	base   = policyv1beta1.BaselineTier
)

func cnp(name string, tier policyv1beta1.Tier, priority int32, subject policyv1beta1.ClusterNetworkPolicySubject) *policyv1beta1.ClusterNetworkPolicy {
	return &policyv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: policyv1beta1.ClusterNetworkPolicySpec{Tier: tier, Priority: priority, Subject: subject}}
}

func withIn(c *policyv1beta1.ClusterNetworkPolicy, rules ...policyv1beta1.ClusterNetworkPolicyIngressRule) *policyv1beta1.ClusterNetworkPolicy {
	c.Spec.Ingress = append(c.Spec.Ingress, rules...)
	return c
}

func withEg(c *policyv1beta1.ClusterNetworkPolicy, rules ...policyv1beta1.ClusterNetworkPolicyEgressRule) *policyv1beta1.ClusterNetworkPolicy {
	c.Spec.Egress = append(c.Spec.Egress, rules...)
	return c
}

func nsSubject(ls *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicySubject {
	return policyv1beta1.ClusterNetworkPolicySubject{Namespaces: ls}
}

func podSubject(ns, pod *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicySubject {
	return policyv1beta1.ClusterNetworkPolicySubject{Pods: &policyv1beta1.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pod}}
}

func inRule(a policyv1beta1.ClusterNetworkPolicyRuleAction, protos []policyv1beta1.ClusterNetworkPolicyProtocol, from ...policyv1beta1.ClusterNetworkPolicyIngressPeer) policyv1beta1.ClusterNetworkPolicyIngressRule {
	return policyv1beta1.ClusterNetworkPolicyIngressRule{Action: a, From: from, Protocols: protos}
}

func egRule(a policyv1beta1.ClusterNetworkPolicyRuleAction, protos []policyv1beta1.ClusterNetworkPolicyProtocol, to ...policyv1beta1.ClusterNetworkPolicyEgressPeer) policyv1beta1.ClusterNetworkPolicyEgressRule {
	return policyv1beta1.ClusterNetworkPolicyEgressRule{Action: a, To: to, Protocols: protos}
}

func fromNS(ls *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicyIngressPeer {
	return policyv1beta1.ClusterNetworkPolicyIngressPeer{Namespaces: ls}
}

func fromPods(ns, pod *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicyIngressPeer {
	return policyv1beta1.ClusterNetworkPolicyIngressPeer{Pods: &policyv1beta1.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pod}}
}

func toNS(ls *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: ls}
}

func toNetworks(cidrs ...policyv1beta1.CIDR) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Networks: cidrs}
}

func toNodes(ls *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Nodes: ls}
}

func tcpNumber(n int32) []policyv1beta1.ClusterNetworkPolicyProtocol {
	return []policyv1beta1.ClusterNetworkPolicyProtocol{{TCP: &policyv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &policyv1beta1.Port{Number: n}}}}
}

func udpRange(first, last int32) []policyv1beta1.ClusterNetworkPolicyProtocol {
	return []policyv1beta1.ClusterNetworkPolicyProtocol{{UDP: &policyv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &policyv1beta1.Port{Range: &policyv1beta1.PortRange{Start: first, End: last}}}}}
}

func namedPortProto(name string) []policyv1beta1.ClusterNetworkPolicyProtocol {
	return []policyv1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: name}}
}

var everything = &metav1.LabelSelector{}

// TestEvaluateTiers reads the ClusterNetworkPolicy type documentation
// (sigs.k8s.io/network-policy-api v0.3.0, apis/v1beta1) sentence by
// sentence: each case is one rule of it, checked on one packet, with the
// tier and rule that must decide it.
func TestEvaluateTiers(t *testing.T) {
	web := map[string]string{"app": "web"}
	cli := map[string]string{"app": "client"}
	server := withPort(pod("x", "server", "n1", t0, web, "10.0.0.1", "fd00::1"), "http", "", 8080)
	client := pod("x", "client", "n2", t0, cli, "10.0.0.2", "fd00::2")
	other := pod("y", "client", "n2", t0, cli, "10.0.0.3", "fd00::3")
	host := pod("x", "host", "n2", t0, cli, "192.0.2.2")
	host.Spec.HostNetwork = true
	namespaces := []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"team": "a"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "y", Labels: map[string]string{"team": "b"}}},
	}
	node := func(name, role string, addrs ...string) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"role": role}}}
		for _, a := range addrs {
			n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
		}
		// A host name that happens to be an address is no node IP.
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: "192.0.2.9"})
		return n
	}
	nodes := []*corev1.Node{node("n1", "control", "192.0.2.1", "2001:db8::1"), node("n2", "worker", "192.0.2.2", "2001:db8::2")}

	teamA, teamB := sel("team", "a"), sel("team", "b")
	toServer := nsSubject(teamA)
	// NetworkPolicies of the NetworkPolicy tier on the server.
	npDenyAll := policy("x", "np-deny", networkingv1.NetworkPolicySpec{PodSelector: *sel("app", "web")})
	npAllowClient := policy("x", "np-allow-client", ingressFrom(sel("app", "web"), []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "client")}}))
	npEgressNothing := policy("x", "np-egress", networkingv1.NetworkPolicySpec{PodSelector: *sel("app", "client"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}})

	type want struct {
		allowed bool
		tier    Tier
		policy  string // the CNP whose rule decided, for Admin and Baseline
		index   int
	}
	tests := []struct {
		name     string
		cnps     []*policyv1beta1.ClusterNetworkPolicy
		nps      []*networkingv1.NetworkPolicy
		src, dst string
		proto    corev1.Protocol
		port     int32
		want     want
		egress   bool // check the egress side's tier and rule, not ingress
	}{
		// Actions and tiers.
		{name: "admin Deny overrides a NetworkPolicy allow",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-x", admin, 10, toServer), inRule(deny, nil, fromNS(everything)))},
			nps:  []*networkingv1.NetworkPolicy{npAllowClient}, src: "10.0.0.2", dst: "10.0.0.1", port: 80,
			want: want{false, TierAdmin, "deny-x", 0}},
		{name: "admin Accept overrides a NetworkPolicy deny",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("accept-x", admin, 10, toServer), inRule(accept, nil, fromNS(teamB)))},
			nps:  []*networkingv1.NetworkPolicy{npDenyAll}, src: "10.0.0.3", dst: "10.0.0.1", port: 80,
			want: want{true, TierAdmin, "accept-x", 0}},
		{name: "admin Accept is final: a baseline Deny is never reached",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{
				withIn(cnp("accept-x", admin, 10, toServer), inRule(accept, nil, fromNS(everything))),
				withIn(cnp("base-deny", base, 0, toServer), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.3", dst: "10.0.0.1", port: 80, want: want{true, TierAdmin, "accept-x", 0}},
		{name: "admin rule not matching leaves the NetworkPolicy tier to decide",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-y", admin, 10, toServer), inRule(deny, nil, fromNS(teamB)))},
			nps:  []*networkingv1.NetworkPolicy{npAllowClient}, src: "10.0.0.2", dst: "10.0.0.1", port: 80,
			want: want{true, TierNetworkPolicy, "", 0}},
		{name: "admin Pass hands over to the NetworkPolicy tier, which denies",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("pass-x", admin, 10, toServer), inRule(pass, nil, fromNS(everything)), inRule(accept, nil, fromNS(everything)))},
			nps:  []*networkingv1.NetworkPolicy{npDenyAll}, src: "10.0.0.2", dst: "10.0.0.1", port: 80,
			want: want{false, TierNetworkPolicy, "", 0}},
		{name: "admin Pass skips the rest of the admin tier, other policies too",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{
				withIn(cnp("pass-x", admin, 10, toServer), inRule(pass, nil, fromNS(everything))),
				withIn(cnp("deny-x", admin, 20, toServer), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},
		{name: "admin Pass with no NetworkPolicy reaches the baseline tier",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{
				withIn(cnp("pass-x", admin, 10, toServer), inRule(pass, nil, fromNS(everything))),
				withIn(cnp("base-deny", base, 10, toServer), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierBaseline, "base-deny", 0}},
		{name: "baseline Deny applies where no NetworkPolicy selects the pod",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("base-deny", base, 10, toServer), inRule(deny, nil, fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierBaseline, "base-deny", 0}},
		{name: "baseline Deny does not apply where a NetworkPolicy selects the pod",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("base-deny", base, 10, toServer), inRule(deny, nil, fromNS(everything)))},
			nps:  []*networkingv1.NetworkPolicy{npAllowClient}, src: "10.0.0.2", dst: "10.0.0.1", port: 80,
			want: want{true, TierNetworkPolicy, "", 0}},
		{name: "baseline Accept does not override a NetworkPolicy deny",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("base-accept", base, 10, toServer), inRule(accept, nil, fromNS(everything)))},
			nps:  []*networkingv1.NetworkPolicy{npDenyAll}, src: "10.0.0.2", dst: "10.0.0.1", port: 80,
			want: want{false, TierNetworkPolicy, "", 0}},
		{name: "a NetworkPolicy of the other direction leaves this one to the baseline",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("base-deny", base, 10, nsSubject(teamA)), inRule(deny, nil, fromNS(everything)))},
			nps:  []*networkingv1.NetworkPolicy{npEgressNothing}, src: "10.0.0.3", dst: "10.0.0.2", port: 80,
			want: want{false, TierBaseline, "base-deny", 0}},
		{name: "baseline Pass goes to the default (allow), past a later baseline Deny",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{
				withIn(cnp("base-pass", base, 10, toServer), inRule(pass, nil, fromNS(everything))),
				withIn(cnp("base-deny", base, 20, toServer), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},
		{name: "baseline Accept is final for the baseline tier",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{
				withIn(cnp("base-accept", base, 10, toServer), inRule(accept, nil, fromNS(teamB))),
				withIn(cnp("base-deny", base, 20, toServer), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.3", dst: "10.0.0.1", port: 80, want: want{true, TierBaseline, "base-accept", 0}},
		{name: "no rule matches in any tier: allowed",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-y", admin, 10, toServer), inRule(deny, nil, fromNS(teamB)))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},
		{name: "a tier the API does not define applies nowhere",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("odd", "Developer", 10, toServer), inRule(deny, nil, fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},

		// Priorities and rule order.
		{name: "lower priority value first: Accept at 10 beats Deny at 20",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{
				withIn(cnp("z-accept", admin, 10, toServer), inRule(accept, nil, fromNS(everything))),
				withIn(cnp("a-deny", admin, 20, toServer), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{true, TierAdmin, "z-accept", 0}},
		{name: "lower priority value first: Deny at 5 beats Accept at 10",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{
				withIn(cnp("z-accept", admin, 10, toServer), inRule(accept, nil, fromNS(everything))),
				withIn(cnp("a-deny", admin, 5, toServer), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierAdmin, "a-deny", 0}},
		{name: "equal priorities: name order decides",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{
				withIn(cnp("b-accept", admin, 10, toServer), inRule(accept, nil, fromNS(everything))),
				withIn(cnp("a-deny", admin, 10, toServer), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierAdmin, "a-deny", 0}},
		{name: "priority 0 is the first",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{
				withIn(cnp("a-deny", admin, 1, toServer), inRule(deny, nil, fromNS(everything))),
				withIn(cnp("b-accept", admin, 0, toServer), inRule(accept, nil, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{true, TierAdmin, "b-accept", 0}},
		{name: "rules in order: the first matching rule decides",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("ordered", admin, 10, toServer),
				inRule(accept, nil, fromNS(teamB)), inRule(deny, nil, fromNS(everything)), inRule(accept, nil, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierAdmin, "ordered", 1}},
		{name: "rules in order: an earlier matching rule wins",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("ordered", admin, 10, toServer),
				inRule(accept, nil, fromNS(teamB)), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.3", dst: "10.0.0.1", port: 80, want: want{true, TierAdmin, "ordered", 0}},

		// Directions.
		{name: "egress Deny on the source",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-y", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNS(teamB)))},
			src:  "10.0.0.2", dst: "10.0.0.3", port: 80, want: want{false, TierAdmin, "no-y", 0}, egress: true},
		{name: "egress rules do not apply to ingress",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-y", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNS(teamB)))},
			src:  "10.0.0.3", dst: "10.0.0.2", port: 80, want: want{true, TierNone, "", 0}},
		{name: "egress Accept leaves the destination's ingress to decide",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("out", admin, 10, nsSubject(teamB)), egRule(accept, nil, toNS(everything)))},
			nps:  []*networkingv1.NetworkPolicy{npDenyAll}, src: "10.0.0.3", dst: "10.0.0.1", port: 80,
			want: want{false, TierNetworkPolicy, "", 0}},
		{name: "egress Accept overrides the source's egress NetworkPolicy",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("out", admin, 10, nsSubject(teamA)), egRule(accept, nil, toNS(teamB)))},
			nps:  []*networkingv1.NetworkPolicy{npEgressNothing}, src: "10.0.0.2", dst: "10.0.0.3", port: 80,
			want: want{true, TierAdmin, "out", 0}, egress: true},

		// Subjects and peers.
		{name: "pods subject: namespace AND pod selectors",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("web-only", admin, 10, podSubject(teamA, sel("app", "client"))), inRule(deny, nil, fromNS(everything)))},
			src:  "10.0.0.3", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},
		{name: "pods peer: namespace AND pod selectors",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-y-web", admin, 10, toServer), inRule(deny, nil, fromPods(teamB, sel("app", "web"))))},
			src:  "10.0.0.3", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},
		{name: "namespaces peer by the name label the API server sets",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-y", admin, 10, toServer), inRule(deny, nil, fromNS(sel(corev1.LabelMetadataName, "y"))))},
			src:  "10.0.0.3", dst: "10.0.0.1", port: 80, want: want{false, TierAdmin, "deny-y", 0}},
		{name: "networks peer matches pod addresses too",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-net", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNetworks("10.0.0.0/30")))},
			src:  "10.0.0.1", dst: "10.0.0.3", port: 80, want: want{false, TierAdmin, "no-net", 0}, egress: true},
		{name: "networks peer outside the cidr",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-net", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNetworks("10.0.0.0/31")))},
			src:  "10.0.0.1", dst: "10.0.0.3", port: 80, want: want{true, TierNone, "", 0}},
		{name: "IPv6 networks peer",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-net", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNetworks("fd00::/126")))},
			src:  "fd00::1", dst: "fd00::3", port: 80, want: want{false, TierAdmin, "no-net", 0}, egress: true},
		{name: "IPv4 networks peer does not match IPv6",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-net", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNetworks("0.0.0.0/0")))},
			src:  "fd00::1", dst: "fd00::3", port: 80, want: want{true, TierNone, "", 0}},
		{name: "a networks cidr with host bits (the API refuses it) is its network",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-net", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNetworks("10.0.0.3/30")))},
			src:  "10.0.0.1", dst: "10.0.0.3", port: 80, want: want{false, TierAdmin, "no-net", 0}, egress: true},
		{name: "a networks entry that does not parse matches nothing",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-net", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNetworks("10.0.0.0")))},
			src:  "10.0.0.1", dst: "10.0.0.3", port: 80, want: want{true, TierNone, "", 0}},
		{name: "nodes peer: the addresses of the nodes with the label",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-control", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNodes(sel("role", "control"))))},
			src:  "10.0.0.2", dst: "192.0.2.1", port: 80, want: want{false, TierAdmin, "no-control", 0}, egress: true},
		{name: "nodes peer: IPv6 node address",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-control", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNodes(sel("role", "control"))))},
			src:  "fd00::2", dst: "2001:db8::1", port: 80, want: want{false, TierAdmin, "no-control", 0}, egress: true},
		{name: "nodes peer: another node",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-control", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNodes(sel("role", "control"))))},
			src:  "10.0.0.2", dst: "192.0.2.2", port: 80, want: want{true, TierNone, "", 0}},
		{name: "nodes peer: an empty selector selects every node",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-nodes", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNodes(everything)))},
			src:  "10.0.0.2", dst: "192.0.2.2", port: 80, want: want{false, TierAdmin, "no-nodes", 0}, egress: true},
		{name: "nodes peer does not match pods",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-nodes", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNodes(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.3", port: 80, want: want{true, TierNone, "", 0}},
		{name: "domainNames peer matches nothing (not enforceable); the rule's other peers still do",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("names", admin, 10, nsSubject(teamA)),
				egRule(accept, nil, policyv1beta1.ClusterNetworkPolicyEgressPeer{DomainNames: []policyv1beta1.DomainName{"example.com"}}),
				egRule(deny, nil, toNetworks("0.0.0.0/0")))},
			src: "10.0.0.2", dst: "10.0.0.3", port: 80, want: want{false, TierAdmin, "names", 1}, egress: true},
		{name: "a host-network pod is no subject",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-egress", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNetworks("0.0.0.0/0")))},
			src:  "192.0.2.2", dst: "10.0.0.3", port: 80, want: want{true, TierNone, "", 0}},
		{name: "a host-network pod is no pod peer",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-x", admin, 10, nsSubject(teamB)), inRule(deny, nil, fromNS(teamA)))},
			src:  "192.0.2.2", dst: "10.0.0.3", port: 80, want: want{true, TierNone, "", 0}},
		{name: "a pod to its own address is never subject to policy",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-all", admin, 0, nsSubject(everything)), inRule(deny, nil, fromNS(everything))),
				withEg(cnp("deny-all-out", admin, 0, nsSubject(everything)), egRule(deny, nil, toNetworks("0.0.0.0/0")))},
			src: "10.0.0.1", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},
		{name: "traffic from the pod's own node passes an admin Deny",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-all", admin, 0, toServer), inRule(deny, nil, fromNS(everything)))},
			src:  "192.0.2.1", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},

		// Ports.
		{name: "TCP port number",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-80", admin, 10, toServer), inRule(deny, tcpNumber(80), fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierAdmin, "deny-80", 0}},
		{name: "TCP port number: another port",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-80", admin, 10, toServer), inRule(deny, tcpNumber(80), fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 81, want: want{true, TierNone, "", 0}},
		{name: "TCP port number: not UDP",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-80", admin, 10, toServer), inRule(deny, tcpNumber(80), fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", proto: corev1.ProtocolUDP, port: 80, want: want{true, TierNone, "", 0}},
		{name: "UDP port range includes its end",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-range", admin, 10, toServer), inRule(deny, udpRange(80, 81), fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", proto: corev1.ProtocolUDP, port: 81, want: want{false, TierAdmin, "deny-range", 0}},
		{name: "UDP port range ends at its end",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-range", admin, 10, toServer), inRule(deny, udpRange(80, 81), fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", proto: corev1.ProtocolUDP, port: 82, want: want{true, TierNone, "", 0}},
		{name: "SCTP port",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-sctp", admin, 10, toServer), inRule(deny,
				[]policyv1beta1.ClusterNetworkPolicyProtocol{{SCTP: &policyv1beta1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: &policyv1beta1.Port{Number: 80}}}}, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", proto: corev1.ProtocolSCTP, port: 80, want: want{false, TierAdmin, "deny-sctp", 0}},
		{name: "destinationNamedPort of the destination pod",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-http", admin, 10, toServer), inRule(deny, namedPortProto("http"), fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 8080, want: want{false, TierAdmin, "deny-http", 0}},
		{name: "destinationNamedPort: another port",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-http", admin, 10, toServer), inRule(deny, namedPortProto("http"), fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},
		{name: "destinationNamedPort: the protocol the container port declares",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("deny-http", admin, 10, toServer), inRule(deny, namedPortProto("http"), fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", proto: corev1.ProtocolUDP, port: 8080, want: want{true, TierNone, "", 0}},
		{name: "egress destinationNamedPort resolves on the destination pod",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("deny-http-out", admin, 10, nsSubject(teamB)), egRule(deny, namedPortProto("http"), toNS(everything)))},
			src:  "10.0.0.3", dst: "10.0.0.1", port: 8080, want: want{false, TierAdmin, "deny-http-out", 0}, egress: true},

		// What the API server refuses, read as the type documentation says.
		{name: "a Deny rule with an empty peer fails closed: denies everything",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("empty", admin, 10, toServer), inRule(deny, tcpNumber(9), policyv1beta1.ClusterNetworkPolicyIngressPeer{}))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierAdmin, "empty", 0}},
		{name: "a Pass rule with an empty peer fails closed: denies everything",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("empty", admin, 10, toServer), inRule(pass, nil, policyv1beta1.ClusterNetworkPolicyIngressPeer{}))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierAdmin, "empty", 0}},
		{name: "an Accept rule with an empty peer fails closed: matches nothing",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("empty", admin, 10, toServer), inRule(accept, nil, fromNS(everything), policyv1beta1.ClusterNetworkPolicyIngressPeer{}))},
			nps:  []*networkingv1.NetworkPolicy{npDenyAll}, src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierNetworkPolicy, "", 0}},
		{name: "an unknown action fails closed: denies everything",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("odd", admin, 10, toServer), inRule("Allow", tcpNumber(9), fromNS(teamB)))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{false, TierAdmin, "odd", 0}},
		{name: "a peer with two fields matches nothing",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("two", admin, 10, nsSubject(teamA)),
				egRule(deny, nil, policyv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: everything, Networks: []policyv1beta1.CIDR{"0.0.0.0/0"}}))},
			src: "10.0.0.2", dst: "10.0.0.3", port: 80, want: want{true, TierNone, "", 0}},
		{name: "a priority above 1000 applies nowhere",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("high", admin, 1001, toServer), inRule(deny, nil, fromNS(everything)))},
			src:  "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},
		{name: "nodes peer: a Hostname entry is no node IP",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withEg(cnp("no-nodes", admin, 10, nsSubject(teamA)), egRule(deny, nil, toNodes(everything)))},
			src:  "10.0.0.2", dst: "192.0.2.9", port: 80, want: want{true, TierNone, "", 0}},
		{name: "a subject with both fields selects nothing",
			cnps: []*policyv1beta1.ClusterNetworkPolicy{withIn(cnp("both", admin, 10, policyv1beta1.ClusterNetworkPolicySubject{Namespaces: everything,
				Pods: &policyv1beta1.NamespacedPod{}}), inRule(deny, nil, fromNS(everything)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: want{true, TierNone, "", 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := &Cluster{Pods: []*corev1.Pod{server, client, other, host}, Namespaces: namespaces, Nodes: nodes,
				Policies: tt.nps, ClusterPolicies: tt.cnps}
			proto := tt.proto
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			v := Evaluate(cl, Packet{Src: netip.MustParseAddr(tt.src), Dst: netip.MustParseAddr(tt.dst), Protocol: proto, Port: tt.port})
			if v.Allowed != tt.want.allowed {
				t.Fatalf("allowed = %v, want %v\n%s", v.Allowed, tt.want.allowed, v.Explain())
			}
			side := v.Ingress
			if tt.egress {
				side = v.Egress
			}
			if side.Tier != tt.want.tier {
				t.Fatalf("decided by tier %q, want %q\n%s", side.Tier, tt.want.tier, v.Explain())
			}
			if tt.want.policy != "" {
				last := side.ClusterRules[len(side.ClusterRules)-1]
				if last.Policy != tt.want.policy || last.Index != tt.want.index {
					t.Errorf("decided by %s, want %s rule %d\n%s", last, tt.want.policy, tt.want.index, v.Explain())
				}
			}
		})
	}
}

// TestExplainNamesTheDecidingRule: the explanation (what `nftpol explain`
// prints) names, per side, the Pass rules crossed and the tier, policy,
// priority, rule and action that decided.
func TestExplainNamesTheDecidingRule(t *testing.T) {
	server := pod("x", "server", "n1", t0, map[string]string{"app": "web"}, "10.0.0.1")
	client := pod("y", "client", "n2", t0, map[string]string{"app": "client"}, "10.0.0.2")
	namespaces := []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"team": "a"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "y", Labels: map[string]string{"team": "b"}}},
	}
	passB := withIn(cnp("pass-b", admin, 5, nsSubject(sel("team", "a"))), inRule(pass, nil, fromNS(sel("team", "b"))))
	passB.Spec.Ingress[0].Name = "hand-over"
	baseDeny := withIn(cnp("base-deny", base, 7, nsSubject(sel("team", "a"))), inRule(deny, nil, fromNS(everything)))
	egressAccept := withEg(cnp("out", admin, 1, nsSubject(sel("team", "b"))), egRule(accept, nil, toNS(everything)))
	cl := &Cluster{Pods: []*corev1.Pod{server, client}, Namespaces: namespaces, ClusterPolicies: []*policyv1beta1.ClusterNetworkPolicy{passB, baseDeny, egressAccept}}
	got := Evaluate(cl, Packet{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr("10.0.0.1"), Protocol: corev1.ProtocolTCP, Port: 80}).Explain()
	for _, want := range []string{
		"10.0.0.2 -> 10.0.0.1 TCP/80: DENIED",
		"egress: allowed for y/client by Admin ClusterNetworkPolicy out (priority 1) egress[0]: Accept",
		`ingress: passed on by Admin ClusterNetworkPolicy pass-b (priority 5) ingress[0] "hand-over": Pass`,
		"ingress: denied for x/server by Baseline ClusterNetworkPolicy base-deny (priority 7) ingress[0]: Deny",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("the explanation lacks %q:\n%s", want, got)
		}
	}
}
