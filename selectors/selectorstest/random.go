package selectorstest

import (
	"fmt"
	"math/rand"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpol/nftpol/selectors"
)

// Nodes returns the names of the nodes of a RandomCluster.
func Nodes() []string { return []string{"node-0", "node-1"} }

// RandomCluster builds a small random cluster: up to three namespaces, nine
// pods over two nodes (some dual-stack, some on the host network, some
// finished), each node with an address inside the ipBlocks the policies
// draw from, and one to four policies drawn from every feature of the API.
func RandomCluster(r *rand.Rand) *selectors.State {
	s := &selectors.State{NodeIPs: map[string][]netip.Addr{}}
	for i, node := range Nodes() {
		s.NodeIPs[node] = []netip.Addr{
			netip.AddrFrom4([4]byte{10, 0, 0, byte(100 + i)}),
			netip.MustParseAddr(fmt.Sprintf("fd00::%d", 100+i)),
		}
	}
	nsNames := []string{"x", "y", "z"}
	for _, ns := range nsNames[:1+r.Intn(3)] {
		l := map[string]string{"ns": ns}
		if r.Intn(2) == 0 {
			l["env"] = []string{"prod", "dev"}[r.Intn(2)]
		}
		s.Namespaces = append(s.Namespaces, &selectors.Namespace{Name: ns, Labels: l})
	}
	n := 0
	for _, ns := range nsNames {
		for _, name := range []string{"a", "b", "c"} {
			n++
			pod := &selectors.Pod{Namespace: ns, Name: name, NodeName: Nodes()[r.Intn(2)],
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
					pod.Ports = append(pod.Ports, selectors.NamedPort{Name: fmt.Sprintf("serve-%d", port), Protocol: selectors.ProtocolTCP, Port: uint16(port + r.Intn(2))})
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
