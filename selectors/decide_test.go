package selectors_test

import (
	"math/rand"
	"net/netip"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// TestDeciderAgreesWithEvaluator: a connection passes when the Decider of
// every node on its path allows it, exactly when the reference evaluator
// (which shares no code with the Decider) allows it.
func TestDeciderAgreesWithEvaluator(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	for i := 0; i < 300; i++ {
		cl := selectorstest.RandomCluster(selectorstest.RandomChoices(r, 1024))
		s := selectorstest.State(cl)
		deciders := map[string]*selectors.Decider{}
		for _, node := range selectorstest.Nodes() {
			m, _ := selectors.BuildModel(node, s)
			deciders[node] = selectors.NewDecider(m)
		}
		places := selectorstest.Places(cl)
		for _, pk := range selectorstest.Packets(cl) {
			got := true
			for _, hop := range selectorstest.Hops(places, pk) {
				if places[pk.Src].IsNode && places[pk.Src].Node == hop.Node {
					continue // a node's own traffic: the agent never cuts it
				}
				got = got && deciders[hop.Node].Allowed(pk.Src, pk.Dst, pk.Protocol, pk.Port)
			}
			if want := reference.Evaluate(cl, pk.Reference()); got != want.Allowed {
				t.Fatalf("decider says %v, evaluator says %v for %s\n%s\ncluster:%s",
					got, want.Allowed, pk, want.Explain(), selectorstest.Describe(cl))
			}
		}
	}
}

// TestDeciderClusterTiers decides through the tiers of
// ClusterNetworkPolicies, which the random clusters above do not draw.
func TestDeciderClusterTiers(t *testing.T) {
	a := netip.MustParseAddr("10.0.0.1") // local pod
	b := netip.MustParseAddr("10.0.0.2") // remote peer in set "b"
	c := netip.MustParseAddr("10.0.9.9") // remote peer in no set
	v6 := netip.MustParseAddr("fd00::1") // a's second address
	deny := selectors.ClusterRule{Action: selectors.ActionDeny, Peers: selectors.PeerMatch{Sets: []string{"b"}},
		Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: 80}}}}
	pass := selectors.ClusterRule{Action: selectors.ActionPass, Peers: selectors.PeerMatch{All: true}, Ports: selectors.PortMatch{All: true}}
	accept := selectors.ClusterRule{Action: selectors.ActionAccept, Peers: selectors.PeerMatch{All: true}, Ports: selectors.PortMatch{All: true}}
	baseDeny := selectors.ClusterRule{Action: selectors.ActionDeny, Peers: selectors.PeerMatch{All: true}, Ports: selectors.PortMatch{All: true}}
	sets := []selectors.AddrSet{{ID: "b", Addrs: []netip.Addr{b}, Ranges: []selectors.AddrRange{{First: netip.MustParseAddr("fd00::10"), Last: netip.MustParseAddr("fd00::20")}}}}
	model := func(admin, baseline []string, np []string, cps ...selectors.ClusterPolicyRules) *selectors.Model {
		m := &selectors.Model{AddrSets: sets, ClusterPolicies: cps,
			Pods: []selectors.PodRules{{Key: "ns/a", IPs: []netip.Addr{a, v6}, Ingress: np}}}
		m.Pods[0].Cluster[selectors.Ingress] = selectors.ClusterTiers{Admin: admin, Baseline: baseline}
		m.Policies = []selectors.PolicyRules{{Key: "ns/allow-b", HasIngress: true,
			Ingress: []selectors.Rule{{Peers: selectors.PeerMatch{Sets: []string{"b"}}, Ports: selectors.PortMatch{All: true}}}}}
		return m
	}
	tcp, udp := selectors.ProtocolTCP, selectors.ProtocolUDP
	cases := []struct {
		name  string
		m     *selectors.Model
		src   netip.Addr
		dst   netip.Addr
		proto selectors.Protocol
		port  uint16
		want  bool
	}{
		{"admin deny matches", model([]string{"deny"}, nil, nil, selectors.ClusterPolicyRules{Name: "deny", Ingress: []selectors.ClusterRule{deny}}), b, a, tcp, 80, false},
		{"admin deny: other port", model([]string{"deny"}, nil, nil, selectors.ClusterPolicyRules{Name: "deny", Ingress: []selectors.ClusterRule{deny}}), b, a, tcp, 81, true},
		{"admin deny: other protocol", model([]string{"deny"}, nil, nil, selectors.ClusterPolicyRules{Name: "deny", Ingress: []selectors.ClusterRule{deny}}), b, a, udp, 80, true},
		{"admin deny: peer not in set", model([]string{"deny"}, nil, nil, selectors.ClusterPolicyRules{Name: "deny", Ingress: []selectors.ClusterRule{deny}}), c, a, tcp, 80, true},
		{"admin pass, then the NetworkPolicy denies c", model([]string{"pass"}, nil, []string{"ns/allow-b"}, selectors.ClusterPolicyRules{Name: "pass", Ingress: []selectors.ClusterRule{pass, deny}}), c, a, tcp, 80, false},
		{"admin pass, then the NetworkPolicy allows b", model([]string{"pass"}, nil, []string{"ns/allow-b"}, selectors.ClusterPolicyRules{Name: "pass", Ingress: []selectors.ClusterRule{pass, deny}}), b, a, tcp, 80, true},
		{"admin accept beats the NetworkPolicy", model([]string{"accept"}, nil, []string{"ns/allow-b"}, selectors.ClusterPolicyRules{Name: "accept", Ingress: []selectors.ClusterRule{accept}}), c, a, tcp, 80, true},
		{"first rule decides", model([]string{"deny", "accept"}, nil, nil,
			selectors.ClusterPolicyRules{Name: "deny", Ingress: []selectors.ClusterRule{deny}}, selectors.ClusterPolicyRules{Name: "accept", Ingress: []selectors.ClusterRule{accept}}), b, a, tcp, 80, false},
		{"baseline deny when no NetworkPolicy", model(nil, []string{"base"}, nil, selectors.ClusterPolicyRules{Name: "base", Ingress: []selectors.ClusterRule{baseDeny}}), b, a, tcp, 80, false},
		{"NetworkPolicy decides before baseline", model(nil, []string{"base"}, []string{"ns/allow-b"}, selectors.ClusterPolicyRules{Name: "base", Ingress: []selectors.ClusterRule{baseDeny}}), b, a, tcp, 80, true},
		{"IPv6 range in the set", model(nil, nil, []string{"ns/allow-b"}), netip.MustParseAddr("fd00::15"), v6, tcp, 80, true},
		{"IPv6 outside the range", model(nil, nil, []string{"ns/allow-b"}), netip.MustParseAddr("fd00::21"), v6, tcp, 80, false},
		{"egress of a is not isolated", model(nil, nil, []string{"ns/allow-b"}), a, c, tcp, 80, true},
		{"neither end is a pod of the model", model(nil, nil, []string{"ns/allow-b"}), b, c, tcp, 80, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := selectors.NewDecider(tc.m).Allowed(tc.src, tc.dst, tc.proto, tc.port); got != tc.want {
				t.Errorf("Allowed(%s -> %s %s/%d) = %v, want %v", tc.src, tc.dst, tc.proto, tc.port, got, tc.want)
			}
		})
	}
}
