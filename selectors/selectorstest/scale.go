package selectorstest

import (
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/nftpol/nftpol/selectors"
)

// ScaleNode is the node whose model a ScaleCluster is meant to be seen
// from.
const ScaleNode = "local"

// ScaleCluster builds a cluster shaped like a busy production one, for
// benchmarks: pods/50 namespaces (teams, environments) of 50 dual-stack pods
// each (10 apps in three tiers, with a named port), localPods of them on
// ScaleNode, spread over as many namespaces, and the rest on nodes of the
// same size; and policies spread
// evenly over the namespaces, each namespace starting with a default deny
// of ingress, then allow policies per app: from a tier of the own
// namespace on a named port, from a tier of a team's namespaces, from a CIDR
// with an exception on a port range, and egress to a team's namespaces and
// DNS. Every policy of a namespace with a pod on ScaleNode selects some of
// them, so the node carries hundreds of policies, unlike a sparse random
// draw.
func ScaleCluster(pods, policies, localPods int) *selectors.State {
	nNamespaces := max(1, pods/50)
	s := &selectors.State{}
	for i := 0; i < nNamespaces; i++ {
		s.Namespaces = append(s.Namespaces, &selectors.Namespace{Name: fmt.Sprintf("ns-%d", i), Labels: map[string]string{
			"kubernetes.io/metadata.name": fmt.Sprintf("ns-%d", i),
			"team":                        fmt.Sprintf("t%d", i%20),
			"env":                         []string{"prod", "dev"}[i%2],
		}})
	}
	stride := max(1, pods/localPods)
	for i := 0; i < pods; i++ {
		node, app, tier := fmt.Sprintf("node-%d", i/localPods), i%10, i%3
		if i%stride == 0 && i/stride < localPods {
			// Local pods get every app and tier, whatever the stride.
			node, app, tier = ScaleNode, (i/stride)%10, (i/stride)%3
		}
		s.Pods = append(s.Pods, &selectors.Pod{
			Namespace: fmt.Sprintf("ns-%d", min(i/50, nNamespaces-1)), Name: fmt.Sprintf("pod-%d", i), NodeName: node,
			Labels: map[string]string{"app": fmt.Sprintf("app-%d", app), "tier": []string{"web", "api", "db"}[tier]},
			IPs: []netip.Addr{
				netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}),
				netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)}),
			},
			Ports: []selectors.NamedPort{{Name: "http", Protocol: selectors.ProtocolTCP, Port: 8080}},
		})
	}
	http := intstr.FromString("http")
	p443 := intstr.FromInt32(443)
	p53 := intstr.FromInt32(53)
	p8000, p8999 := intstr.FromInt32(8000), int32(8999)
	udp := corev1.ProtocolUDP
	for i := 0; i < policies; i++ {
		ns := i % nNamespaces
		k := i / nNamespaces // the namespace's k-th policy
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: fmt.Sprintf("ns-%d", ns), Name: fmt.Sprintf("pol-%d", k)}}
		if k == 0 {
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
			s.Policies = append(s.Policies, np)
			continue
		}
		np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("app-%d", k%10)}}
		if k%3 == 1 {
			np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"tier": []string{"web", "api", "db"}[k%3]}}
		}
		team := &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", (ns+k)%20)}}
		np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{
			{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "web"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &http}}},
			{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: team, PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "api"}}}}},
			{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "172.16.0.0/12", Except: []string{fmt.Sprintf("172.16.%d.0/24", k%256)}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Port: &p443}, {Port: &p8000, EndPort: &p8999}}},
		}
		if k%2 == 0 {
			np.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
			np.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{
				{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: team}}},
				{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &p53}}},
			}
		}
		s.Policies = append(s.Policies, np)
	}
	return s
}
