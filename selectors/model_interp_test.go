package selectors

import (
	"fmt"
	"math/rand"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// decideByModel decides a packet the way the nftables table does, from the
// Models of the source's and the destination's nodes: egress by the source
// pod's isolation on its node, ingress by the destination pod's on its.
func decideByModel(models map[string]*Model, nodeOf map[netip.Addr]string, p Packet) bool {
	side := func(dir Direction, own netip.Addr, remote netip.Addr) bool {
		m := models[nodeOf[own]]
		if m == nil {
			return true
		}
		for i := range m.Pods {
			pr := &m.Pods[i]
			if !containsAddr(pr.IPs, own) {
				continue
			}
			keys := pr.Ingress
			if dir == Egress {
				keys = pr.Egress
			}
			if len(keys) == 0 {
				return true
			}
			for _, k := range keys {
				for _, r := range policyRules(m, k, dir) {
					if modelRuleMatches(m, r, remote, p) {
						return true
					}
				}
			}
			return false
		}
		return true
	}
	return side(Egress, p.Src, p.Dst) && side(Ingress, p.Dst, p.Src)
}

func containsAddr(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

func policyRules(m *Model, key string, dir Direction) []Rule {
	for _, pr := range m.Policies {
		if pr.Key == key {
			if dir == Ingress {
				return pr.Ingress
			}
			return pr.Egress
		}
	}
	return nil
}

func modelRuleMatches(m *Model, r Rule, remote netip.Addr, p Packet) bool {
	peerOK := r.Peers.All
	for _, id := range r.Peers.Sets {
		for _, s := range m.AddrSets {
			if s.ID != id {
				continue
			}
			if containsAddr(s.Addrs, remote) {
				peerOK = true
			}
			for _, rg := range s.Ranges {
				if rg.First.BitLen() == remote.BitLen() && rg.First.Compare(remote) <= 0 && remote.Compare(rg.Last) <= 0 {
					peerOK = true
				}
			}
		}
	}
	if !peerOK {
		return false
	}
	if r.Ports.All {
		return true
	}
	for _, pr := range r.Ports.Ranges {
		if pr.Protocol == p.Protocol && pr.First <= p.Port && p.Port <= pr.Last {
			return true
		}
	}
	for _, s := range m.PortSets {
		if s.ID != r.Ports.Named {
			continue
		}
		for _, e := range s.Entries {
			if e.Addr == p.Dst && e.Protocol == p.Protocol && e.Port == p.Port {
				return true
			}
		}
	}
	return false
}

// randomCluster builds a small random cluster: a few namespaces, pods on
// two nodes, and policies drawn from every feature of the API.
func randomCluster(r *rand.Rand) *State {
	s := &State{NodeIPs: map[string][]netip.Addr{}}
	nsNames := []string{"x", "y", "z"}
	for _, ns := range nsNames[:1+r.Intn(3)] {
		l := map[string]string{"ns": ns}
		if r.Intn(2) == 0 {
			l["env"] = []string{"prod", "dev"}[r.Intn(2)]
		}
		s.Namespaces = append(s.Namespaces, &Namespace{Name: ns, Labels: l})
	}
	n := 0
	for _, ns := range nsNames {
		for _, name := range []string{"a", "b", "c"} {
			n++
			pod := &Pod{Namespace: ns, Name: name, NodeName: fmt.Sprintf("node-%d", r.Intn(2)),
				Labels: map[string]string{"pod": name}}
			if r.Intn(3) == 0 {
				pod.Labels["tier"] = []string{"web", "db"}[r.Intn(2)]
			}
			pod.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(n)})}
			if r.Intn(2) == 0 {
				pod.IPs = append(pod.IPs, netip.MustParseAddr(fmt.Sprintf("fd00::%d", n)))
			}
			pod.HostNetwork = r.Intn(12) == 0
			pod.Terminal = r.Intn(12) == 0
			for _, port := range []int{80, 81} {
				if r.Intn(4) != 0 {
					pod.Ports = append(pod.Ports, NamedPort{Name: fmt.Sprintf("serve-%d", port), Protocol: ProtocolTCP, Port: uint16(port + r.Intn(2))})
				}
			}
			s.Pods = append(s.Pods, pod)
		}
	}
	for i := 0; i < 1+r.Intn(4); i++ {
		s.Policies = append(s.Policies, randomPolicy(r, nsNames[r.Intn(3)], fmt.Sprintf("p%d", i)))
	}
	return s
}

func randomSelector(r *rand.Rand, key string, values ...string) *metav1.LabelSelector {
	switch r.Intn(5) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchLabels: map[string]string{key: values[r.Intn(len(values))]}}
	case 2:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: metav1.LabelSelectorOpIn, Values: values[:1+r.Intn(len(values))]}}}
	case 3:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: metav1.LabelSelectorOpNotIn, Values: values[:1]}}}
	}
	op := []metav1.LabelSelectorOperator{metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist}[r.Intn(2)]
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: op}}}
}

func randomPeers(r *rand.Rand) []networkingv1.NetworkPolicyPeer {
	var peers []networkingv1.NetworkPolicyPeer
	for i := 0; i < r.Intn(3); i++ {
		switch r.Intn(4) {
		case 0:
			peers = append(peers, networkingv1.NetworkPolicyPeer{PodSelector: randomSelector(r, "pod", "a", "b", "c")})
		case 1:
			peers = append(peers, networkingv1.NetworkPolicyPeer{NamespaceSelector: randomSelector(r, "ns", "x", "y", "z")})
		case 2:
			peers = append(peers, networkingv1.NetworkPolicyPeer{NamespaceSelector: randomSelector(r, "ns", "x", "y"), PodSelector: randomSelector(r, "pod", "a", "b")})
		default:
			b := &networkingv1.IPBlock{CIDR: []string{"10.0.0.0/28", "10.0.0.0/24", "0.0.0.0/0", "fd00::/120", "::/0"}[r.Intn(5)]}
			if r.Intn(2) == 0 {
				if b.CIDR[0] == 'f' || b.CIDR[0] == ':' {
					b.Except = []string{"fd00::4/126"}
				} else {
					b.Except = []string{"10.0.0.4/30", "10.0.0.6/31"}
				}
			}
			peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: b})
		}
	}
	return peers
}

func randomPorts(r *rand.Rand) []networkingv1.NetworkPolicyPort {
	var ports []networkingv1.NetworkPolicyPort
	for i := 0; i < r.Intn(3); i++ {
		proto := []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP}[r.Intn(2)]
		np := networkingv1.NetworkPolicyPort{Protocol: &proto}
		switch r.Intn(4) {
		case 0:
			v := intstr.FromInt32(int32(80 + r.Intn(2)))
			np.Port = &v
		case 1:
			v := intstr.FromInt32(80)
			end := int32(81)
			np.Port, np.EndPort = &v, &end
		case 2:
			v := intstr.FromString(fmt.Sprintf("serve-%d", 80+r.Intn(2)))
			np.Port = &v
		}
		ports = append(ports, np)
	}
	return ports
}

func randomPolicy(r *rand.Rand, ns, name string) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	p.Spec.PodSelector = *randomSelector(r, "pod", "a", "b", "c")
	switch r.Intn(4) {
	case 0:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 1:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 2:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	for i := 0; i < r.Intn(3); i++ {
		p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: randomPeers(r), Ports: randomPorts(r)})
	}
	for i := 0; i < r.Intn(3); i++ {
		p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: randomPeers(r), Ports: randomPorts(r)})
	}
	return p
}

// checkAgreement compares the model interpreter with Evaluate on every pod
// pair, both families, TCP and UDP, ports 80 and 81.
func checkAgreement(t *testing.T, s *State) {
	t.Helper()
	models := map[string]*Model{}
	nodeOf := map[netip.Addr]string{}
	for _, node := range []string{"node-0", "node-1"} {
		m, _ := BuildModel(node, s)
		models[node] = m
	}
	for _, p := range s.Pods {
		if p.IsEndpoint() {
			for _, ip := range p.IPs {
				nodeOf[ip] = p.NodeName
			}
		}
	}
	for _, src := range s.Pods {
		for _, dst := range s.Pods {
			if src == dst {
				continue
			}
			for _, sip := range src.IPs {
				for _, dip := range dst.IPs {
					if sip.Is4() != dip.Is4() {
						continue
					}
					for _, proto := range []Protocol{ProtocolTCP, ProtocolUDP} {
						for _, port := range []uint16{80, 81, 82} {
							pk := Packet{Src: sip, Dst: dip, Protocol: proto, Port: port}
							want := Evaluate(s, pk)
							got := decideByModel(models, nodeOf, pk)
							if got != want.Allowed {
								t.Fatalf("model says %v, evaluator says %v for %s (%s -> %s)\n%s\npolicies: %+v",
									got, want.Allowed, pk, src.Key(), dst.Key(), want.Explain(), describePolicies(s))
							}
						}
					}
				}
			}
		}
	}
}

func describePolicies(s *State) string {
	out := ""
	for _, p := range s.Policies {
		out += fmt.Sprintf("\n%s/%s: %+v", p.Namespace, p.Name, p.Spec)
	}
	return out
}

func TestModelAgreesWithEvaluator(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		s := randomCluster(r)
		checkAgreement(t, s)
	}
}

func FuzzModelAgreesWithEvaluate(f *testing.F) {
	for _, seed := range []int64{1, 2, 3, 42, 1234} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, seed int64) {
		checkAgreement(t, randomCluster(rand.New(rand.NewSource(seed))))
	})
}
