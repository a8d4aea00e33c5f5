package test

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/test/kerneltest"
)

// Builders for ClusterNetworkPolicies (policy.networking.k8s.io/v1beta1),
// in the style of the NetworkPolicy ones in policies_test.go.

const (
	cnpAccept = policyv1beta1.ClusterNetworkPolicyRuleActionAccept
	cnpDeny   = policyv1beta1.ClusterNetworkPolicyRuleActionDeny
	cnpPass   = policyv1beta1.ClusterNetworkPolicyRuleActionPass
	adminTier = policyv1beta1.AdminTier
	baseTier  = policyv1beta1.BaselineTier
)

// clusterPolicy is a ClusterNetworkPolicy whose subject is the pods of the
// namespaces ns selects.
func clusterPolicy(name string, tier policyv1beta1.Tier, priority int32, ns *metav1.LabelSelector) *policyv1beta1.ClusterNetworkPolicy {
	return &policyv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: policyv1beta1.ClusterNetworkPolicySpec{Tier: tier, Priority: priority, Subject: policyv1beta1.ClusterNetworkPolicySubject{Namespaces: ns}}}
}

// clusterPolicyOnPods is a ClusterNetworkPolicy whose subject is the pods
// pod selects in the namespaces ns selects.
func clusterPolicyOnPods(name string, tier policyv1beta1.Tier, priority int32, ns, pod *metav1.LabelSelector) *policyv1beta1.ClusterNetworkPolicy {
	c := clusterPolicy(name, tier, priority, nil)
	c.Spec.Subject = policyv1beta1.ClusterNetworkPolicySubject{Pods: &policyv1beta1.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pod}}
	return c
}

func withIngressRules(c *policyv1beta1.ClusterNetworkPolicy, rules ...policyv1beta1.ClusterNetworkPolicyIngressRule) *policyv1beta1.ClusterNetworkPolicy {
	c.Spec.Ingress = append(c.Spec.Ingress, rules...)
	return c
}

func withEgressRules(c *policyv1beta1.ClusterNetworkPolicy, rules ...policyv1beta1.ClusterNetworkPolicyEgressRule) *policyv1beta1.ClusterNetworkPolicy {
	c.Spec.Egress = append(c.Spec.Egress, rules...)
	return c
}

func cnpFrom(action policyv1beta1.ClusterNetworkPolicyRuleAction, peers ...policyv1beta1.ClusterNetworkPolicyIngressPeer) policyv1beta1.ClusterNetworkPolicyIngressRule {
	return policyv1beta1.ClusterNetworkPolicyIngressRule{Action: action, From: peers}
}

func cnpTo(action policyv1beta1.ClusterNetworkPolicyRuleAction, peers ...policyv1beta1.ClusterNetworkPolicyEgressPeer) policyv1beta1.ClusterNetworkPolicyEgressRule {
	return policyv1beta1.ClusterNetworkPolicyEgressRule{Action: action, To: peers}
}

func fromNamespaces(ns *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicyIngressPeer {
	return policyv1beta1.ClusterNetworkPolicyIngressPeer{Namespaces: ns}
}

func fromPodsIn(ns, pod *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicyIngressPeer {
	return policyv1beta1.ClusterNetworkPolicyIngressPeer{Pods: &policyv1beta1.NamespacedPod{NamespaceSelector: *ns, PodSelector: *pod}}
}

func toNamespaces(ns *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: ns}
}

func toNetworks(prefixes ...string) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	var nets []policyv1beta1.CIDR
	for _, p := range prefixes {
		nets = append(nets, policyv1beta1.CIDR(p))
	}
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Networks: nets}
}

func toNodes(sel *metav1.LabelSelector) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Nodes: sel}
}

// protoPort is a protocols entry for one port number.
func protoPort(proto string, n int32) policyv1beta1.ClusterNetworkPolicyProtocol {
	dp := &policyv1beta1.Port{Number: n}
	if proto == "UDP" {
		return policyv1beta1.ClusterNetworkPolicyProtocol{UDP: &policyv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: dp}}
	}
	return policyv1beta1.ClusterNetworkPolicyProtocol{TCP: &policyv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: dp}}
}

// protoRange is a protocols entry for a port range.
func protoRange(proto string, first, last int32) policyv1beta1.ClusterNetworkPolicyProtocol {
	dp := &policyv1beta1.Port{Range: &policyv1beta1.PortRange{Start: first, End: last}}
	if proto == "UDP" {
		return policyv1beta1.ClusterNetworkPolicyProtocol{UDP: &policyv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: dp}}
	}
	return policyv1beta1.ClusterNetworkPolicyProtocol{TCP: &policyv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: dp}}
}

func inProtocols(r policyv1beta1.ClusterNetworkPolicyIngressRule, ps ...policyv1beta1.ClusterNetworkPolicyProtocol) policyv1beta1.ClusterNetworkPolicyIngressRule {
	r.Protocols = append(r.Protocols, ps...)
	return r
}

func egProtocols(r policyv1beta1.ClusterNetworkPolicyEgressRule, ps ...policyv1beta1.ClusterNetworkPolicyProtocol) policyv1beta1.ClusterNetworkPolicyEgressRule {
	r.Protocols = append(r.Protocols, ps...)
	return r
}

func staticCluster(ps ...*policyv1beta1.ClusterNetworkPolicy) func(caseEnv) []*policyv1beta1.ClusterNetworkPolicy {
	return func(caseEnv) []*policyv1beta1.ClusterNetworkPolicy { return ps }
}

// clusterPolicyCases are written anew from the ClusterNetworkPolicy type
// documentation on the upstream model (namespaces x, y, z labeled
// ns=<name>; pods a, b, c labeled pod=<name>): every action in both tiers,
// Pass into the NetworkPolicy tier and into the default, Baseline only
// where no NetworkPolicy selects the pod, priorities and rule order, each
// subject and peer kind a pod matrix can show, ports, ranges and named
// ports (SCTP in the ruleset: this kernel has no SCTP sockets), and
// changes in steps.
func clusterPolicyCases() []conformanceCase {
	nsX, nsY, nsZ, anyNS := selPtr("ns", "x"), selPtr("ns", "y"), selPtr("ns", "z"), selPtr()
	allowAllIngressX := withIngress(policy("x", "allow-all", all, nil), from())
	denyIngressX := policy("x", "deny-ingress", all, ingressOnly)
	return []conformanceCase{
		{name: "admin-deny-overrides-networkpolicy-allow", steps: []step{
			{name: "x allows everything; admin denies y to x",
				apply:        static(allowAllIngressX),
				applyCluster: staticCluster(withIngressRules(clusterPolicy("deny-y-to-x", adminTier, 10, nsX), cnpFrom(cnpDeny, fromNamespaces(nsY)))),
				expect:       func(e *expectation) { e.deny("y/*", "x/*") }},
			{name: "delete the admin policy", removeCluster: []string{"deny-y-to-x"}, expect: func(e *expectation) {}},
		}},
		{name: "admin-accept-overrides-networkpolicy-deny", steps: []step{
			{name: "x denies all ingress; admin accepts y to x",
				apply:        static(denyIngressX),
				applyCluster: staticCluster(withIngressRules(clusterPolicy("accept-y-to-x", adminTier, 10, nsX), cnpFrom(cnpAccept, fromNamespaces(nsY)))),
				expect:       func(e *expectation) { e.isolateIngress("x/*", "y/*") }},
		}},
		{name: "admin-accept-is-final-over-baseline-deny", steps: []step{
			{name: "baseline denies all ingress to z; admin accepts x to z",
				applyCluster: staticCluster(
					withIngressRules(clusterPolicy("base-deny-z", baseTier, 10, nsZ), cnpFrom(cnpDeny, fromNamespaces(anyNS))),
					withIngressRules(clusterPolicy("accept-x-to-z", adminTier, 10, nsZ), cnpFrom(cnpAccept, fromNamespaces(nsX)))),
				expect: func(e *expectation) { e.isolateIngress("z/*", "x/*") }},
		}},
		{name: "admin-pass-into-networkpolicy-tier", steps: []step{
			{name: "admin passes y, denies the rest; x's policy allows y/a only",
				apply: static(withIngress(policy("x", "allow-y-a", all, nil), from(nsPodPeer(nsY, selPtr("pod", "a"))))),
				applyCluster: staticCluster(
					withIngressRules(clusterPolicy("pass-y", adminTier, 10, nsX), cnpFrom(cnpPass, fromNamespaces(nsY))),
					withIngressRules(clusterPolicy("deny-all-to-x", adminTier, 20, nsX), cnpFrom(cnpDeny, fromNamespaces(anyNS)))),
				expect: func(e *expectation) { e.isolateIngress("x/*", "y/a") }},
			{name: "without x's policy, y passes to the default (allowed)", remove: []string{"x/allow-y-a"},
				expect: func(e *expectation) { e.isolateIngress("x/*", "y/*") }},
		}},
		{name: "pass-through-both-tiers-to-the-default", steps: []step{
			{name: "admin and baseline pass x to z; baseline denies the rest",
				applyCluster: staticCluster(
					withIngressRules(clusterPolicy("admin-pass-x", adminTier, 5, nsZ), cnpFrom(cnpPass, fromNamespaces(nsX))),
					withIngressRules(clusterPolicy("admin-deny-y", adminTier, 6, nsZ), cnpFrom(cnpDeny, fromNamespaces(nsY))),
					withIngressRules(clusterPolicy("base-pass-x", baseTier, 10, nsZ), cnpFrom(cnpPass, fromNamespaces(nsX))),
					withIngressRules(clusterPolicy("base-deny-all", baseTier, 20, nsZ), cnpFrom(cnpDeny, fromNamespaces(anyNS)))),
				expect: func(e *expectation) { e.isolateIngress("z/*", "x/*") }},
		}},
		{name: "baseline-only-where-no-networkpolicy-selects", steps: []step{
			{name: "baseline denies all ingress; x/a's own policy allows everything",
				apply:        static(withIngress(policy("x", "allow-all-to-a", sel("pod", "a"), nil), from())),
				applyCluster: staticCluster(withIngressRules(clusterPolicy("base-deny-all", baseTier, 10, anyNS), cnpFrom(cnpDeny, fromNamespaces(anyNS)))),
				expect:       func(e *expectation) { e.isolateIngress("*/*"); e.allow("*/*", "x/a") }},
			{name: "an egress-only policy in y leaves y's ingress to the baseline, and decides y's egress",
				apply: static(withEgress(policy("y", "egress-to-x-a", all, egressOnly), to(nsPodPeer(nsX, selPtr("pod", "a"))))),
				expect: func(e *expectation) {
					e.isolateIngress("*/*")
					e.allow("*/*", "x/a")
					e.isolateEgress("y/*", "x/a")
				}},
			{name: "a baseline Accept from z at priority 5 comes before the baseline Deny",
				applyCluster: staticCluster(withIngressRules(clusterPolicy("base-accept-z", baseTier, 5, anyNS), cnpFrom(cnpAccept, fromNamespaces(nsZ)))),
				expect: func(e *expectation) {
					e.isolateIngress("*/*", "z/*")
					e.allow("*/*", "x/a")
					e.isolateEgress("y/*", "x/a")
				}},
		}},
		{name: "priorities-in-steps", steps: []step{
			{name: "accept y/a at 10, deny y at 20",
				applyCluster: staticCluster(
					withIngressRules(clusterPolicy("accept-y-a", adminTier, 10, nsX), cnpFrom(cnpAccept, fromPodsIn(nsY, selPtr("pod", "a")))),
					withIngressRules(clusterPolicy("deny-y", adminTier, 20, nsX), cnpFrom(cnpDeny, fromNamespaces(nsY)))),
				expect: func(e *expectation) { e.deny("y/*", "x/*"); e.allow("y/a", "x/*") }},
			{name: "accept y/a moved to 30: deny y first",
				applyCluster: staticCluster(withIngressRules(clusterPolicy("accept-y-a", adminTier, 30, nsX), cnpFrom(cnpAccept, fromPodsIn(nsY, selPtr("pod", "a"))))),
				expect:       func(e *expectation) { e.deny("y/*", "x/*") }},
			{name: "equal priorities: by name, accept-y-a before deny-y",
				applyCluster: staticCluster(withIngressRules(clusterPolicy("accept-y-a", adminTier, 20, nsX), cnpFrom(cnpAccept, fromPodsIn(nsY, selPtr("pod", "a"))))),
				expect:       func(e *expectation) { e.deny("y/*", "x/*"); e.allow("y/a", "x/*") }},
			{name: "delete deny-y", removeCluster: []string{"deny-y"}, expect: func(e *expectation) {}},
		}},
		{name: "rule-order-within-a-policy", steps: []step{
			{name: "accept y/a, then deny y",
				applyCluster: staticCluster(withIngressRules(clusterPolicy("ordered", adminTier, 10, nsX),
					cnpFrom(cnpAccept, fromPodsIn(nsY, selPtr("pod", "a"))), cnpFrom(cnpDeny, fromNamespaces(nsY)))),
				expect: func(e *expectation) { e.deny("y/*", "x/*"); e.allow("y/a", "x/*") }},
			{name: "deny y, then accept y/a",
				applyCluster: staticCluster(withIngressRules(clusterPolicy("ordered", adminTier, 10, nsX),
					cnpFrom(cnpDeny, fromNamespaces(nsY)), cnpFrom(cnpAccept, fromPodsIn(nsY, selPtr("pod", "a"))))),
				expect: func(e *expectation) { e.deny("y/*", "x/*") }},
		}},
		{name: "egress-deny-and-accept", steps: []step{
			{name: "admin denies x/a's egress to z",
				applyCluster: staticCluster(withEgressRules(clusterPolicyOnPods("x-a-not-to-z", adminTier, 10, nsX, selPtr("pod", "a")), cnpTo(cnpDeny, toNamespaces(nsZ)))),
				expect:       func(e *expectation) { e.deny("x/a", "z/*") }},
			{name: "x denies all egress; admin accepts x to y",
				apply:        static(policy("x", "deny-egress", all, egressOnly)),
				applyCluster: staticCluster(withEgressRules(clusterPolicy("x-to-y", adminTier, 5, nsX), cnpTo(cnpAccept, toNamespaces(nsY)))),
				expect:       func(e *expectation) { e.isolateEgress("x/*", "y/*") }},
			{name: "egress Accept leaves the destination's ingress: y denies all ingress",
				apply:  static(policy("y", "deny-ingress", all, ingressOnly)),
				expect: func(e *expectation) { e.isolateEgress("x/*", "y/*"); e.isolateIngress("y/*") }},
		}},
		{name: "egress-networks", steps: []step{
			{name: "admin denies x/a's egress to y/b's addresses",
				applyCluster: func(env caseEnv) []*policyv1beta1.ClusterNetworkPolicy {
					return []*policyv1beta1.ClusterNetworkPolicy{withEgressRules(clusterPolicyOnPods("x-a-not-to-y-b", adminTier, 10, nsX, selPtr("pod", "a")),
						cnpTo(cnpDeny, toNetworks(env.PodPrefixes("y/b")...)))}
				},
				expect: func(e *expectation) { e.deny("x/a", "y/b") }},
			{name: "only on TCP 80",
				applyCluster: func(env caseEnv) []*policyv1beta1.ClusterNetworkPolicy {
					return []*policyv1beta1.ClusterNetworkPolicy{withEgressRules(clusterPolicyOnPods("x-a-not-to-y-b", adminTier, 10, nsX, selPtr("pod", "a")),
						egProtocols(cnpTo(cnpDeny, toNetworks(env.PodPrefixes("y/b")...)), protoPort("TCP", 80)))}
				},
				expect: func(e *expectation) {
					if tcp80Only(e) {
						e.deny("x/a", "y/b")
					}
				}},
			{name: "0.0.0.0/0 and ::/0 deny all, after a Pass of pod traffic to z",
				applyCluster: staticCluster(withEgressRules(clusterPolicyOnPods("x-a-not-to-y-b", adminTier, 10, nsX, selPtr("pod", "a")),
					cnpTo(cnpPass, toNamespaces(nsZ)), cnpTo(cnpDeny, toNetworks("0.0.0.0/0", "::/0")))),
				expect: func(e *expectation) { e.isolateEgress("x/a", "z/*") }},
		}},
		{name: "ports-ranges-and-named-ports", steps: []step{
			{name: "deny into y on UDP 80-81 and TCP 81",
				applyCluster: staticCluster(withIngressRules(clusterPolicy("y-ports", adminTier, 10, nsY),
					inProtocols(cnpFrom(cnpDeny, fromNamespaces(anyNS)), protoRange("UDP", 80, 81), protoPort("TCP", 81)))),
				expect: func(e *expectation) {
					if !tcp80Only(e) {
						e.deny("*/*", "y/*")
					}
				}},
			{name: "deny into y on the named port serve-80-udp only",
				applyCluster: staticCluster(withIngressRules(clusterPolicy("y-ports", adminTier, 10, nsY),
					inProtocols(cnpFrom(cnpDeny, fromNamespaces(anyNS)), policyv1beta1.ClusterNetworkPolicyProtocol{DestinationNamedPort: "serve-80-udp"}))),
				expect: func(e *expectation) {
					if e.proto == "UDP" && e.port == 80 {
						e.deny("*/*", "y/*")
					}
				}},
		}},
		{name: "sctp-in-the-ruleset", steps: []step{{name: "admin denies SCTP 80 into x/a: no TCP or UDP probe changes",
			applyCluster: staticCluster(withIngressRules(clusterPolicyOnPods("deny-sctp", adminTier, 10, nsX, selPtr("pod", "a")),
				inProtocols(cnpFrom(cnpDeny, fromNamespaces(anyNS)), policyv1beta1.ClusterNetworkPolicyProtocol{
					SCTP: &policyv1beta1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: &policyv1beta1.Port{Number: 80}}}))),
			expect:     func(e *expectation) {},
			rulesetHas: map[string][]string{"x/a": {"sctp dport 80 counter", `comment "cnp:deny-sctp ingress[0]"`}},
		}}},
		{name: "namespace-relabelled-into-a-subject", steps: []step{
			{name: "admin denies ingress to namespaces labelled locked",
				applyCluster: staticCluster(withIngressRules(clusterPolicy("lock", adminTier, 10, selPtr("locked", "true")), cnpFrom(cnpDeny, fromNamespaces(anyNS)))),
				expect:       func(e *expectation) {}},
			{name: "label y locked", namespaceLabels: map[string]map[string]string{"y": {"ns": "y", "locked": "true"}},
				expect: func(e *expectation) { e.isolateIngress("y/*") }},
			{name: "unlabel y", namespaceLabels: map[string]map[string]string{"y": {"ns": "y"}},
				expect: func(e *expectation) {}},
			{name: "label a pod's namespace z as a peer instead: admin denies z to x",
				applyCluster:    staticCluster(withIngressRules(clusterPolicy("lock", adminTier, 10, nsX), cnpFrom(cnpDeny, fromNamespaces(selPtr("locked", "true"))))),
				namespaceLabels: map[string]map[string]string{"z": {"ns": "z", "locked": "true"}},
				expect:          func(e *expectation) { e.deny("z/*", "x/*") }},
		}},
	}
}

// TestClusterNetworkPolicyConformance runs the ClusterNetworkPolicy cases
// with real packets through two agents (reject mode, so denied probes fail
// fast): full matrices on TCP and UDP, ports 80 and 81, IPv4 and IPv6 after
// each step, each equal to the case's expectation and to the reference
// evaluator's prediction.
func TestClusterNetworkPolicyConformance(t *testing.T) {
	// One case checks the ruleset as an operator reads it, with nft.
	kerneltest.Require(t, kerneltest.ControlPlane, kerneltest.NftBinary)
	m := startModel(t, e2ePrefix+"cnp", "--deny-action", "reject")
	m.runCases(t, clusterPolicyCases())
}
