package selectorstest

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/reference"
)

// Nodes returns the names of the nodes of a RandomCluster.
func Nodes() []string { return []string{"node-0", "node-1"} }

// RandomCluster draws a small cluster of API objects, every choice read
// from c: up to three namespaces (pods may live in one with no object),
// nine pods over two nodes (IPv4, IPv6 or both, in podIPs or only the
// legacy podIP, some on the host network, finished, pending without an
// address, or claiming an address another pod holds, with named ports in
// containers, sidecars and plain init containers), each node with an
// address inside the ipBlocks the policies draw from, one to four
// policies drawn from every feature of the API and a few invalid parts,
// then up to four ClusterNetworkPolicies of both tiers (every action,
// subject and peer kind, ports, ranges and named ports, tied priorities),
// and now and then no NetworkPolicy at all, so that clusters with
// NetworkPolicies, ClusterNetworkPolicies and both are drawn. The
// ClusterNetworkPolicies come last so that inputs written before them
// still draw the clusters they drew (their bytes end before).
//
// The objects are what the API server would hand out: the model builder
// reads them through its own conversion (State), the reference evaluator
// reads them as they are.
func RandomCluster(c *Choices) *reference.Cluster {
	cl := &reference.Cluster{NodeAddresses: map[string][]netip.Addr{}}
	for i, node := range Nodes() {
		cl.NodeAddresses[node] = []netip.Addr{
			netip.AddrFrom4([4]byte{10, 0, 0, byte(100 + i)}),
			netip.MustParseAddr(fmt.Sprintf("fd00::%d", 100+i)),
		}
		// The Node objects, for ClusterNetworkPolicy nodes peers: the
		// same addresses, and a host name that is no node IP.
		obj := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node, Labels: map[string]string{"node": node, "role": []string{"control", "worker"}[i]}}}
		for _, a := range cl.NodeAddresses[node] {
			obj.Status.Addresses = append(obj.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a.String()})
		}
		obj.Status.Addresses = append(obj.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: node})
		cl.Nodes = append(cl.Nodes, obj)
	}
	nsNames := []string{"x", "y", "z"}
	for _, ns := range nsNames[:1+c.Intn(3)] {
		l := map[string]string{"ns": ns}
		if env := Pick(c, "", "prod", "dev"); env != "" {
			l["env"] = env
		}
		// The API server always sets the name label; an object without
		// it checks that the builder supplies it.
		if c.Intn(4) != 3 {
			l[corev1.LabelMetadataName] = ns
		}
		cl.Namespaces = append(cl.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: l}})
	}
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var v4s []string
	n := 0
	for _, ns := range nsNames {
		for _, name := range []string{"a", "b", "c"} {
			n++
			cl.Pods = append(cl.Pods, randomPod(c, ns, name, n, created, &v4s))
		}
	}
	for i := 0; i < 1+c.Intn(4); i++ {
		cl.Policies = append(cl.Policies, randomPolicy(c, Pick(c, nsNames...), fmt.Sprintf("p%d", i)))
	}
	for i := c.Intn(5); i > 0; i-- {
		cl.ClusterPolicies = append(cl.ClusterPolicies, randomClusterPolicy(c, fmt.Sprintf("cnp%d", i)))
	}
	if len(cl.ClusterPolicies) > 0 && c.Intn(3) == 2 {
		cl.Policies = nil // ClusterNetworkPolicies alone
	}
	return cl
}

// randomPod draws the n-th pod. v4s are the IPv4 addresses of the pods
// before it, for a pod to claim one of them.
func randomPod(c *Choices, ns, name string, n int, created time.Time, v4s *[]string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name},
			// Few distinct times, so equal timestamps (the API keeps
			// seconds) decide address ownership by name often.
			CreationTimestamp: metav1.NewTime(created.Add(time.Duration(c.Intn(3)) * time.Minute))},
		Spec:   corev1.PodSpec{NodeName: Pick(c, Nodes()...)},
		Status: corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if tier := Pick(c, "", "web", "db"); tier != "" {
		pod.Labels["tier"] = tier
	}
	v4, v6 := fmt.Sprintf("10.0.0.%d", n), fmt.Sprintf("fd00::%d", n)
	if len(*v4s) > 0 && c.Intn(6) == 5 {
		v4 = (*v4s)[c.Intn(len(*v4s))] // a stale object and a new pod on one address
	}
	*v4s = append(*v4s, v4)
	if c.Intn(8) == 7 {
		v4 = "::ffff:" + v4 // IPv4-mapped form
	}
	var ips []string
	switch c.Intn(4) {
	case 0, 1:
		ips = []string{v4}
	case 2:
		ips = []string{v4, v6}
	default:
		ips = []string{v6}
	}
	pod.Status.PodIP = ips[0]
	if c.Intn(4) != 3 { // else only the legacy field
		for _, ip := range ips {
			pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
		}
	}
	switch c.Intn(12) {
	case 9:
		pod.Status.Phase = corev1.PodSucceeded
	case 10:
		pod.Status.Phase = corev1.PodFailed
	case 11:
		pod.Status = corev1.PodStatus{Phase: corev1.PodPending} // no address yet
	}
	pod.Spec.HostNetwork = c.Intn(12) == 11

	pod.Spec.Containers = []corev1.Container{{Name: "main"}}
	always := corev1.ContainerRestartPolicyAlways
	for _, port := range []int32{80, 81} {
		cp := corev1.ContainerPort{
			Name:          fmt.Sprintf("serve-%d", port),
			ContainerPort: port + int32(c.Intn(2)),
			Protocol:      Pick(c, "", corev1.ProtocolTCP, corev1.ProtocolUDP),
		}
		switch c.Intn(5) {
		case 0, 1:
			pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports, cp)
		case 2: // a sidecar: its ports are the pod's
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: "side-" + cp.Name, RestartPolicy: &always, Ports: []corev1.ContainerPort{cp}})
		case 3: // a plain init container: gone before the pod serves
			pod.Spec.InitContainers = append(pod.Spec.InitContainers, corev1.Container{Name: "init-" + cp.Name, Ports: []corev1.ContainerPort{cp}})
		}
	}
	return pod
}

func randomSelector(c *Choices, key string, values ...string) *metav1.LabelSelector {
	switch c.Intn(7) {
	case 0:
		return &metav1.LabelSelector{}
	case 1:
		return &metav1.LabelSelector{MatchLabels: map[string]string{key: Pick(c, values...)}}
	case 2:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: metav1.LabelSelectorOpIn, Values: values[:1+c.Intn(len(values))]}}}
	case 3:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: metav1.LabelSelectorOpNotIn, Values: values[:1]}}}
	case 4:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpExists}}}
	case 5:
		return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpDoesNotExist}},
			MatchLabels: map[string]string{key: Pick(c, values...)}}
	}
	if c.apiValid {
		return &metav1.LabelSelector{}
	}
	// Invalid (In without values): selects nothing.
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: metav1.LabelSelectorOpIn}}}
}

func randomPeers(c *Choices) []networkingv1.NetworkPolicyPeer {
	var peers []networkingv1.NetworkPolicyPeer
	for i := c.Intn(3); i > 0; i-- {
		switch c.Intn(9) {
		case 0, 1:
			peers = append(peers, networkingv1.NetworkPolicyPeer{PodSelector: randomSelector(c, "pod", "a", "b", "c")})
		case 2, 3:
			peers = append(peers, networkingv1.NetworkPolicyPeer{NamespaceSelector: randomSelector(c, "ns", "x", "y", "z")})
		case 4, 5:
			peers = append(peers, networkingv1.NetworkPolicyPeer{NamespaceSelector: randomSelector(c, "ns", "x", "y"), PodSelector: randomSelector(c, "pod", "a", "b")})
		case 6, 7:
			peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: randomIPBlock(c)})
		default: // invalid: an ipBlock with a selector, or an empty peer
			if c.apiValid {
				c.Intn(2)
				peers = append(peers, networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}})
				continue
			}
			if c.Intn(2) == 0 {
				peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: randomIPBlock(c), PodSelector: &metav1.LabelSelector{}})
			} else {
				peers = append(peers, networkingv1.NetworkPolicyPeer{})
			}
		}
	}
	return peers
}

func randomIPBlock(c *Choices) *networkingv1.IPBlock {
	b := &networkingv1.IPBlock{CIDR: Pick(c, "10.0.0.0/28", "10.0.0.0/24", "0.0.0.0/0", "fd00::/120", "::/0", "10.0.0.8/29", "fd00::/124", "10.0.0.7/29")}
	if c.apiValid {
		b.CIDR = netip.MustParsePrefix(b.CIDR).Masked().String() // no host bits
	}
	for i := c.Intn(3); i > 0; i-- {
		// Excepts inside the cidr and, now and then, outside it or of the
		// other family (the API server refuses those; they exclude nothing).
		ex := Pick(c, "10.0.0.4/30", "fd00::4/126", "10.0.0.6/31", "fd00::1/128", "10.0.0.1/32", "10.0.0.8/30", "fd00::8/125", "10.0.0.0/16")
		if c.apiValid && !strictlyInside(ex, b.CIDR) {
			continue
		}
		b.Except = append(b.Except, ex)
	}
	return b
}

func randomPorts(c *Choices) []networkingv1.NetworkPolicyPort {
	var ports []networkingv1.NetworkPolicyPort
	for i := c.Intn(3); i > 0; i-- {
		var np networkingv1.NetworkPolicyPort
		if proto := Pick(c, corev1.Protocol(""), corev1.ProtocolTCP, corev1.ProtocolUDP, corev1.ProtocolSCTP); proto != "" {
			np.Protocol = &proto
		}
		switch c.Intn(7) {
		case 0: // every port of the protocol
		case 1, 2:
			v := intstr.FromInt32(int32(80 + c.Intn(3)))
			np.Port = &v
		case 3:
			first := int32(80 + c.Intn(2))
			v, end := intstr.FromInt32(first), first+int32(c.Intn(3))-1 // may end before it starts
			if c.apiValid && end < first {
				end = first
			}
			np.Port, np.EndPort = &v, &end
		case 4, 5:
			v := intstr.FromString(fmt.Sprintf("serve-%d", 80+c.Intn(2)))
			np.Port = &v
		default: // invalid: endPort with a named port, or without a port
			if c.apiValid {
				c.Intn(2)
				break // every port of the protocol
			}
			end := int32(81)
			if c.Intn(2) == 0 {
				v := intstr.FromString("serve-80")
				np.Port = &v
			}
			np.EndPort = &end
		}
		ports = append(ports, np)
	}
	return ports
}

func randomPolicy(c *Choices, ns, name string) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	p.Spec.PodSelector = *randomSelector(c, "pod", "a", "b", "c")
	switch c.Intn(4) {
	case 1:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	case 2:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	case 3:
		p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
	}
	for i := c.Intn(3); i > 0; i-- {
		p.Spec.Ingress = append(p.Spec.Ingress, networkingv1.NetworkPolicyIngressRule{From: randomPeers(c), Ports: randomPorts(c)})
	}
	for i := c.Intn(3); i > 0; i-- {
		p.Spec.Egress = append(p.Spec.Egress, networkingv1.NetworkPolicyEgressRule{To: randomPeers(c), Ports: randomPorts(c)})
	}
	return p
}

// State is the cluster as the model builder takes it, through the
// conversions the agent uses (selectors.PodFromObject,
// selectors.NamespaceFromObject and selectors.NodeFromObject): the
// builder's reading of the objects, not the evaluator's.
func State(cl *reference.Cluster) *selectors.State {
	s := &selectors.State{Policies: cl.Policies, ClusterPolicies: cl.ClusterPolicies}
	for _, n := range cl.Nodes {
		s.Nodes = append(s.Nodes, selectors.NodeFromObject(n))
	}
	for _, p := range cl.Pods {
		s.Pods = append(s.Pods, selectors.PodFromObject(p))
	}
	for _, ns := range cl.Namespaces {
		s.Namespaces = append(s.Namespaces, selectors.NamespaceFromObject(ns))
	}
	return s
}

// randomClusterPolicy draws a ClusterNetworkPolicy from every feature of
// the API: both tiers, priorities that often tie (ties go by name), both
// subject kinds, zero to three rules per direction with every action,
// namespaces, pods, networks, nodes and domainNames peers, TCP/UDP/SCTP
// ports and ranges and named ports; and a few parts the API server
// refuses where their reading is documented alike by the evaluator and
// the builder (a peer with no field in a Deny or Pass rule, a peer with
// two fields, an unknown action, a priority out of range, a subject with
// both fields).
func randomClusterPolicy(c *Choices, name string) *policyv1beta1.ClusterNetworkPolicy {
	cnp := &policyv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}
	cnp.Spec.Tier = Pick(c, policyv1beta1.AdminTier, policyv1beta1.BaselineTier)
	cnp.Spec.Priority = Pick[int32](c, 10, 20, 10, 0, 1000, 1001)
	if c.apiValid && cnp.Spec.Priority > 1000 {
		cnp.Spec.Priority = 1000
	}
	switch c.Intn(6) {
	case 0, 1, 2:
		cnp.Spec.Subject.Namespaces = randomSelector(c, "ns", "x", "y", "z")
	case 3, 4:
		cnp.Spec.Subject.Pods = randomNamespacedPod(c)
	default: // both: selects nothing
		cnp.Spec.Subject.Namespaces = randomSelector(c, "ns", "x", "y", "z")
		cnp.Spec.Subject.Pods = randomNamespacedPod(c)
		if c.apiValid {
			cnp.Spec.Subject.Namespaces = nil
		}
	}
	for i := c.Intn(4); i > 0; i-- {
		action := randomAction(c)
		r := policyv1beta1.ClusterNetworkPolicyIngressRule{Name: fmt.Sprintf("in-%d", i), Action: action}
		for j := 1 + c.Intn(2); j > 0; j-- {
			pe := randomEgressPeer(c, action, false)
			r.From = append(r.From, policyv1beta1.ClusterNetworkPolicyIngressPeer{Namespaces: pe.Namespaces, Pods: pe.Pods})
		}
		r.Protocols = randomProtocols(c, true)
		cnp.Spec.Ingress = append(cnp.Spec.Ingress, r)
	}
	for i := c.Intn(4); i > 0; i-- {
		action := randomAction(c)
		r := policyv1beta1.ClusterNetworkPolicyEgressRule{Name: fmt.Sprintf("eg-%d", i), Action: action}
		podsOnly := true
		for j := 1 + c.Intn(2); j > 0; j-- {
			pe := randomEgressPeer(c, action, true)
			podsOnly = podsOnly && (pe.Namespaces != nil || pe.Pods != nil) && pe.Nodes == nil && pe.Networks == nil && pe.DomainNames == nil
			r.To = append(r.To, pe)
		}
		// "networks/nodes/domainNames peer cannot be set with namedPorts"
		r.Protocols = randomProtocols(c, podsOnly)
		cnp.Spec.Egress = append(cnp.Spec.Egress, r)
	}
	return cnp
}

func randomAction(c *Choices) policyv1beta1.ClusterNetworkPolicyRuleAction {
	if c.Intn(16) == 15 && !c.apiValid {
		return "Allow" // unknown: the rule denies everything
	}
	return Pick(c, policyv1beta1.ClusterNetworkPolicyRuleActionAccept, policyv1beta1.ClusterNetworkPolicyRuleActionDeny,
		policyv1beta1.ClusterNetworkPolicyRuleActionPass)
}

func randomNamespacedPod(c *Choices) *policyv1beta1.NamespacedPod {
	return &policyv1beta1.NamespacedPod{NamespaceSelector: *randomSelector(c, "ns", "x", "y"), PodSelector: *randomSelector(c, "pod", "a", "b", "c")}
}

// randomEgressPeer draws one peer; egress adds the kinds only egress has.
// domainNames only ever go in Accept rules and an empty peer only in Deny
// and Pass rules, as the API and the evaluator's documentation have them.
func randomEgressPeer(c *Choices, action policyv1beta1.ClusterNetworkPolicyRuleAction, egress bool) policyv1beta1.ClusterNetworkPolicyEgressPeer {
	kinds := 3
	if egress {
		kinds = 7
	}
	switch c.Intn(kinds) {
	case 0:
		return policyv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: randomSelector(c, "ns", "x", "y", "z")}
	case 1:
		return policyv1beta1.ClusterNetworkPolicyEgressPeer{Pods: randomNamespacedPod(c)}
	case 2:
		if action == policyv1beta1.ClusterNetworkPolicyRuleActionAccept || c.Intn(8) != 0 || c.apiValid {
			return policyv1beta1.ClusterNetworkPolicyEgressPeer{Pods: randomNamespacedPod(c)}
		}
		return policyv1beta1.ClusterNetworkPolicyEgressPeer{} // fails closed: the rule denies everything
	case 3, 4:
		var nets []policyv1beta1.CIDR
		for i := 1 + c.Intn(2); i > 0; i-- {
			n := Pick[policyv1beta1.CIDR](c, "10.0.0.0/28", "fd00::/120", "0.0.0.0/0", "::/0", "10.0.0.8/29", "10.0.0.100/31", "fd00::64/127", "10.0.0.4/30")
			if c.apiValid && slices.Contains(nets, n) {
				continue // a set: no duplicates
			}
			nets = append(nets, n)
		}
		return policyv1beta1.ClusterNetworkPolicyEgressPeer{Networks: nets}
	case 5:
		return policyv1beta1.ClusterNetworkPolicyEgressPeer{Nodes: randomSelector(c, "role", "control", "worker")}
	}
	if action == policyv1beta1.ClusterNetworkPolicyRuleActionAccept {
		return policyv1beta1.ClusterNetworkPolicyEgressPeer{DomainNames: []policyv1beta1.DomainName{"example.com"}}
	}
	if c.apiValid {
		return policyv1beta1.ClusterNetworkPolicyEgressPeer{Networks: []policyv1beta1.CIDR{"0.0.0.0/0"}}
	}
	// Two fields: the peer matches nothing.
	return policyv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: randomSelector(c, "ns", "x"), Networks: []policyv1beta1.CIDR{"0.0.0.0/0"}}
}

// randomProtocols draws none (every port) to two entries; named ports
// only where the rule's peers are all pods.
func randomProtocols(c *Choices, namedOK bool) []policyv1beta1.ClusterNetworkPolicyProtocol {
	var out []policyv1beta1.ClusterNetworkPolicyProtocol
	for i := c.Intn(3); i > 0; i-- {
		var port *policyv1beta1.Port
		switch c.Intn(4) {
		case 0, 1:
			port = &policyv1beta1.Port{Number: int32(80 + c.Intn(3))}
		case 2:
			first := int32(80 + c.Intn(2))
			port = &policyv1beta1.Port{Range: &policyv1beta1.PortRange{Start: first, End: first + 1}}
		default: // no destinationPort: every port (the API server refuses it)
			if c.apiValid {
				port = &policyv1beta1.Port{Number: 80}
			}
		}
		var pr policyv1beta1.ClusterNetworkPolicyProtocol
		switch c.Intn(5) {
		case 0, 1:
			pr.TCP = &policyv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}
		case 2:
			pr.UDP = &policyv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: port}
		case 3:
			pr.SCTP = &policyv1beta1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: port}
		default:
			if !namedOK {
				pr.TCP = &policyv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: port}
				break
			}
			pr.DestinationNamedPort = fmt.Sprintf("serve-%d", 80+c.Intn(2))
		}
		out = append(out, pr)
	}
	return out
}

// RandomPolicies draws policies for a cluster whose pods exist already
// (the e2e testbed's upstream model: namespaces x, y and z labeled
// ns=<name>, pods a, b and c labeled pod=<name>): zero to three
// NetworkPolicies and zero to three ClusterNetworkPolicies, at least one
// policy in all, drawn as RandomCluster draws them. Some are parts the API
// server refuses; a test creating them through it drops those.
func RandomPolicies(c *Choices) ([]*networkingv1.NetworkPolicy, []*policyv1beta1.ClusterNetworkPolicy) {
	var nps []*networkingv1.NetworkPolicy
	var cnps []*policyv1beta1.ClusterNetworkPolicy
	for i := c.Intn(4); i > 0; i-- {
		nps = append(nps, randomPolicy(c, Pick(c, "x", "y", "z"), fmt.Sprintf("p%d", i)))
	}
	for i := c.Intn(4); i > 0; i-- {
		cnps = append(cnps, randomClusterPolicy(c, fmt.Sprintf("cnp%d", i)))
	}
	if len(nps)+len(cnps) == 0 {
		cnps = append(cnps, randomClusterPolicy(c, "cnp0"))
	}
	return nps, cnps
}

// strictlyInside reports whether the prefix inner is a strict part of
// outer, as the API server demands of an ipBlock's except.
func strictlyInside(inner, outer string) bool {
	in, err1 := netip.ParsePrefix(inner)
	out, err2 := netip.ParsePrefix(outer)
	return err1 == nil && err2 == nil && in.Addr().Is4() == out.Addr().Is4() && in.Bits() > out.Bits() && out.Contains(in.Addr())
}
