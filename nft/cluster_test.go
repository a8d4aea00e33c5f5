package nft

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// modelAllows decides one direction of a packet at a local pod from the
// Model alone, by the tier semantics model.go documents: the pod's Admin
// policies in order (first matching rule decides; Pass leaves the tier),
// the NetworkPolicy tier when a policy isolates the pod, the Baseline
// policies, then allow. It is the specification the compiled chains are
// held to here; the packet-level conformance against the independent
// reference evaluator lives in test/.
func modelAllows(m *selectors.Model, pod *selectors.PodRules, dir selectors.Direction, pk selectorstest.Packet) bool {
	remote, dst := pk.Src, pk.Dst
	if dir == selectors.Egress {
		remote = pk.Dst
	}
	inSet := func(id string) bool {
		for _, s := range m.AddrSets {
			if s.ID != id {
				continue
			}
			for _, a := range s.Addrs {
				if a == remote {
					return true
				}
			}
			for _, r := range s.Ranges {
				if r.First.BitLen() == remote.BitLen() && r.First.Compare(remote) <= 0 && remote.Compare(r.Last) <= 0 {
					return true
				}
			}
		}
		return false
	}
	matches := func(peers selectors.PeerMatch, ports selectors.PortMatch) bool {
		peerOK := peers.All
		for _, id := range peers.Sets {
			peerOK = peerOK || inSet(id)
		}
		if !peerOK {
			return false
		}
		if ports.All {
			return true
		}
		for _, r := range ports.Ranges {
			if r.Protocol == pk.Protocol && r.First <= pk.Port && pk.Port <= r.Last {
				return true
			}
		}
		for _, s := range m.PortSets {
			if s.ID != ports.Named {
				continue
			}
			for _, e := range s.Entries {
				if e.Addr == dst && e.Protocol == pk.Protocol && e.Port == pk.Port {
					return true
				}
			}
		}
		return false
	}
	tier := func(names []string) (decided, allow bool) {
		for _, name := range names {
			for _, cp := range m.ClusterPolicies {
				if cp.Name != name {
					continue
				}
				for _, r := range cp.Rules(dir) {
					if !matches(r.Peers, r.Ports) {
						continue
					}
					switch r.Action {
					case selectors.ActionAccept:
						return true, true
					case selectors.ActionDeny:
						return true, false
					}
					return false, false // Pass: the rest of the tier is skipped
				}
			}
		}
		return false, false
	}
	if decided, allow := tier(pod.Cluster[dir].Admin); decided {
		return allow
	}
	if keys := pod.Isolating(dir); len(keys) > 0 {
		for _, k := range keys {
			for _, p := range m.Policies {
				if p.Key != k {
					continue
				}
				for _, r := range p.Rules(dir) {
					if matches(r.Peers, r.Ports) {
						return true
					}
				}
			}
		}
		return false
	}
	if decided, allow := tier(pod.Cluster[dir].Baseline); decided {
		return allow
	}
	return true
}

// TestCompiledTiersFollowTheModel runs packets through the compiled base
// chain of one direction (the expressions the kernel receives, in the
// interpreter) at every pod of random models with ClusterNetworkPolicies
// and NetworkPolicies, and holds the verdict to modelAllows.
func TestCompiledTiersFollowTheModel(t *testing.T) {
	cfgs := []Config{{}, {Deny: DenyReject}, {LogDenied: true}, {Deny: DenyReject, LogDenied: true}}
	r := rand.New(rand.NewSource(14))
	checked := 0
	for i := 0; i < 40; i++ {
		m := randomModel(r)
		cfg := cfgs[i%len(cfgs)]
		kt := toKernel(Compile(m, cfg))
		// Remote addresses: every set member and range end, pods, and
		// addresses in no set.
		remotes := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")}
		for _, s := range m.AddrSets {
			remotes = append(remotes, s.Addrs...)
			for _, rg := range s.Ranges {
				remotes = append(remotes, rg.First, rg.Last)
			}
		}
		for _, p := range m.Pods {
			remotes = append(remotes, p.IPs...)
		}
		for pi := range m.Pods {
			pod := &m.Pods[pi]
			for _, local := range pod.IPs {
				for _, remote := range remotes {
					if remote.BitLen() != local.BitLen() || remote == local {
						continue
					}
					for _, proto := range []selectors.Protocol{selectors.ProtocolTCP, selectors.ProtocolUDP, selectors.ProtocolSCTP} {
						for _, port := range []uint16{53, 80, 81, 8001, 9} {
							for _, dir := range selectors.Directions {
								pk := selectorstest.Packet{Src: remote, Dst: local, Protocol: proto, Port: port}
								chain := ChainForwardIngress
								if dir == selectors.Egress {
									pk.Src, pk.Dst = local, remote
									chain = ChainForwardEgress
								}
								w := newWirePacket(pk)
								w.ctState = expr.CtStateBitNEW
								var trace []string
								out, err := kt.runChain(kt.chains[chain], w, 0, &trace)
								if err != nil {
									t.Fatalf("model %d, %s %s: %v", i, dir, pk, err)
								}
								got := out != dropped
								if want := modelAllows(m, pod, dir, pk); got != want {
									t.Fatalf("model %d (%+v), pod %s %s %s: table allows=%v, model %v\n%s\n%s",
										i, cfg, pod.Key, dir, pk, got, want, describeTrace(trace), Compile(m, cfg).String())
								}
								checked++
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d packet directions checked", checked)
}

// TestPodChainHoldsOnlyItsPolicies: with many ClusterNetworkPolicies, the
// chain a pod's element jumps to holds the rules of the policies that
// select that pod and no others, so the rules a packet walks do not grow
// with the number of policies in the cluster.
func TestPodChainHoldsOnlyItsPolicies(t *testing.T) {
	m := &selectors.Model{}
	for i := 0; i < 50; i++ {
		name := fmt.Sprintf("cnp-%02d", i)
		m.ClusterPolicies = append(m.ClusterPolicies, selectors.ClusterPolicyRules{Name: name, Tier: selectors.TierAdmin, Priority: int32(i),
			Ingress: []selectors.ClusterRule{{Action: selectors.ActionDeny, Peers: selectors.PeerMatch{All: true},
				Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: uint16(1000 + i), Last: uint16(1000 + i)}}}}}})
		m.Pods = append(m.Pods, selectors.PodRules{Key: fmt.Sprintf("x/p%02d", i), IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})},
			Cluster: [2]selectors.ClusterTiers{selectors.Ingress: {Admin: []string{name}}}})
	}
	rs := Compile(m, Config{})
	vmap := rs.sets[MapIngressV4]
	for i, p := range m.Pods {
		chain := rs.chains[vmap.elems.get(addrKey(p.IPs[0]))]
		if chain == nil {
			t.Fatalf("%s has no chain", p.Key)
		}
		if len(chain.rules) != 1 || !strings.HasPrefix(chain.rules[0].comment, fmt.Sprintf("cnp:cnp-%02d ", i)) {
			t.Errorf("%s walks %d rules: %v", p.Key, len(chain.rules), chain.rules)
		}
	}
}

// TestAdminChainOutlivesItsNextTier: when the tier after Admin changes for
// a pod (here a NetworkPolicy isolates a pod that had Baseline next), its
// Admin chain, named after its Admin policies only, stays as it is with
// its counters; only the tie- chain between it and the next tier changes.
func TestAdminChainOutlivesItsNextTier(t *testing.T) {
	withBaseline := func() *selectors.State {
		s := cnpCluster()
		s.ClusterPolicies = append(s.ClusterPolicies, &cnpv1beta1.ClusterNetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "baseline-front"},
			Spec: cnpv1beta1.ClusterNetworkPolicySpec{Tier: cnpv1beta1.BaselineTier, Priority: 5,
				Subject: cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
				Ingress: []cnpv1beta1.ClusterNetworkPolicyIngressRule{{Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
					From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}}}})
		return s
	}
	before, after := withBaseline(), withBaseline()
	after.Policies = append(after.Policies, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "isolate-api"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "api"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}})
	mb, _ := selectors.BuildModel("node-a", before)
	ma, _ := selectors.BuildModel("node-a", after)
	cfg := Config{}
	rb, ra := Compile(mb, cfg), Compile(ma, cfg)
	var admin []string
	for name := range rb.chains {
		if strings.HasPrefix(name, adminChainPrefix) {
			admin = append(admin, name)
		}
	}
	if len(admin) == 0 {
		t.Fatal("no Admin chain before the change")
	}
	plan := Diff(rb, ra)
	text := plan.String()
	for _, name := range admin {
		if strings.Contains(text, "nftpol "+name) { // its own add, flush, delete or rules; a jump to it is fine
			t.Errorf("the change touches Admin chain %s:\n%s", name, text)
		}
	}
	if !strings.Contains(text, tieChainPrefix) {
		t.Errorf("the change adds no tie- chain:\n%s", text)
	}
}
