package reference

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Cluster is what a decision reads: the API objects as the API server holds
// them, and the addresses of the nodes (which no object here carries).
type Cluster struct {
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the ClusterNetworkPolicies of both tiers
	// (policy.networking.k8s.io/v1beta1).
	ClusterPolicies []*policyv1beta1.ClusterNetworkPolicy
	// Nodes are the Node objects: their labels and status.addresses are
	// what a ClusterNetworkPolicy's nodes peer selects, and their
	// addresses count as NodeAddresses too.
	Nodes []*corev1.Node
	// NodeAddresses are each node's own addresses, by node name.
	NodeAddresses map[string][]netip.Addr
}

// Packet is the first packet of a connection.
type Packet struct {
	Src, Dst netip.Addr
	// Protocol is TCP, UDP or SCTP.
	Protocol corev1.Protocol
	// Port is the destination port.
	Port int32
}

func (p Packet) String() string {
	return fmt.Sprintf("%s -> %s %s/%d", p.Src, p.Dst, p.Protocol, p.Port)
}

// Direction is the side of a policy: ingress protects the destination pod,
// egress the source pod.
type Direction string

// The two directions, spelled as the API's policyTypes are, in lower case.
const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// RuleRef names one rule of one policy: its index in spec.ingress or
// spec.egress.
type RuleRef struct {
	Policy    string // namespace/name
	Direction Direction
	Index     int
}

func (r RuleRef) String() string {
	return fmt.Sprintf("%s %s[%d]", r.Policy, r.Direction, r.Index)
}

// Side is the decision of one direction: egress of the source pod, or
// ingress of the destination pod.
type Side struct {
	// Pod is "namespace/name" of the pod that owns the address on this
	// side, "" when no endpoint pod owns it.
	Pod string
	// FromNode is true when ingress is allowed because the packet comes
	// from the node the destination pod runs on.
	FromNode bool
	// Tier is the tier that decided: Admin or Baseline (the last of
	// ClusterRules, an Accept or a Deny), NetworkPolicy (IsolatedBy is
	// not empty), or TierNone (nothing decided: the default, allowed).
	Tier Tier
	// ClusterRules are the ClusterNetworkPolicy rules that matched, in
	// the order they were met: Pass rules, then the rule that decided.
	ClusterRules []ClusterRuleRef
	// IsolatedBy lists the NetworkPolicies that select Pod for this
	// direction when the NetworkPolicy tier was reached; none means they
	// left the decision to the Baseline tier.
	IsolatedBy []string
	// AllowedBy lists the NetworkPolicy rules that match the packet.
	AllowedBy []RuleRef
	Allowed   bool
}

// Verdict is the decision on a packet: it passes when both sides allow it.
type Verdict struct {
	Packet  Packet
	Allowed bool
	// Self is true when the packet never leaves its pod (source and
	// destination are one address, or two addresses of one pod); no policy
	// can deny it, so both sides are allowed without looking at policies.
	Self    bool
	Egress  Side
	Ingress Side
}

// Evaluate decides one packet. Policies in audit mode decide nothing
// (see Audit).
func Evaluate(c *Cluster, p Packet) Verdict {
	return evaluate(c.enforcing(""), p)
}

func evaluate(c *Cluster, p Packet) Verdict {
	p.Src, p.Dst = p.Src.Unmap(), p.Dst.Unmap()
	v := Verdict{Packet: p}
	srcPod, dstPod := c.OwnerOf(p.Src), c.OwnerOf(p.Dst)
	v.Egress.Pod, v.Ingress.Pod = keyOf(srcPod), keyOf(dstPod)

	if p.Src == p.Dst || (srcPod != nil && srcPod == dstPod) {
		v.Self, v.Allowed, v.Egress.Allowed, v.Ingress.Allowed = true, true, true, true
		return v
	}

	policies := c.sortedPolicies()
	// Egress: the source pod's policies, the destination is the peer; a
	// named port is the destination pod's.
	v.Egress = decide(c, policies, Egress, srcPod, p.Dst, dstPod, dstPod, p)
	// Ingress: the destination pod's policies, the source is the peer; a
	// named port is the destination pod's, the one being protected.
	if dstPod != nil && c.isNodeAddressOf(dstPod, p.Src) {
		v.Ingress = Side{Pod: keyOf(dstPod), FromNode: true, Allowed: true}
	} else {
		v.Ingress = decide(c, policies, Ingress, dstPod, p.Src, srcPod, dstPod, p)
	}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v
}

// decide applies to pod, in direction dir, the tiers in their order:
// Admin ClusterNetworkPolicies, NetworkPolicies, Baseline
// ClusterNetworkPolicies, then the default (allow). peerAddr and peerPod
// are the other end; portPod is the pod whose named ports a rule's port
// names refer to.
func decide(c *Cluster, policies []*networkingv1.NetworkPolicy, dir Direction, pod *corev1.Pod, peerAddr netip.Addr, peerPod, portPod *corev1.Pod, p Packet) Side {
	side := Side{Pod: keyOf(pod)}
	if pod == nil {
		// Policies only ever select pods: an address that is no pod's is
		// not restricted on its side.
		side.Allowed = true
		return side
	}
	// Admin: "If Admin tier has made a final decision (Accept or Deny) on
	// a connection, then no further evaluation is done."
	matched, decided := clusterTier(c, TierAdmin, dir, pod, peerAddr, peerPod, portPod, p)
	side.ClusterRules = matched
	if decided {
		side.Tier = TierAdmin
		side.Allowed = matched[len(matched)-1].Action == policyv1beta1.ClusterNetworkPolicyRuleActionAccept
		return side
	}
	// NetworkPolicy: "v1.NetworkPolicy always makes a final decision for
	// selected pods. Further evaluation only happens for Pods not
	// selected by a v1.NetworkPolicy."
	decideByNetworkPolicies(c, &side, policies, dir, pod, peerAddr, peerPod, portPod, p)
	if len(side.IsolatedBy) > 0 {
		side.Tier = TierNetworkPolicy
		side.Allowed = len(side.AllowedBy) > 0
		return side
	}
	matched, decided = clusterTier(c, TierBaseline, dir, pod, peerAddr, peerPod, portPod, p)
	side.ClusterRules = append(side.ClusterRules, matched...)
	if decided {
		side.Tier = TierBaseline
		side.Allowed = matched[len(matched)-1].Action == policyv1beta1.ClusterNetworkPolicyRuleActionAccept
		return side
	}
	// "If a given connection wasn't allowed or denied by any of the
	// tiers, the default kubernetes policy is applied, which says that
	// all pods can communicate with each other."
	side.Allowed = true
	return side
}

// decideByNetworkPolicies applies to pod, in direction dir, every
// NetworkPolicy that selects it, recording them and their matching rules
// in side.
func decideByNetworkPolicies(c *Cluster, side *Side, policies []*networkingv1.NetworkPolicy, dir Direction, pod *corev1.Pod, peerAddr netip.Addr, peerPod, portPod *corev1.Pod, p Packet) {
	for _, np := range policies {
		if !selectsPod(np, pod) || !affects(np, dir) {
			continue
		}
		side.IsolatedBy = append(side.IsolatedBy, keyOfPolicy(np))
		for i, r := range rulesOf(np, dir) {
			if anyPeerMatches(c, np, r.peers, peerAddr, peerPod) && anyPortMatches(r.ports, p, portPod) {
				side.AllowedBy = append(side.AllowedBy, RuleRef{Policy: keyOfPolicy(np), Direction: dir, Index: i})
			}
		}
	}
}

func (c *Cluster) sortedPolicies() []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for _, np := range c.Policies {
		if np != nil {
			out = append(out, np)
		}
	}
	sort.Slice(out, func(i, j int) bool { return keyOfPolicy(out[i]) < keyOfPolicy(out[j]) })
	return out
}

// affects reads spec.policyTypes: "If this field is not specified, it will
// default based on the existence of ingress or egress rules; policies that
// contain an egress section are assumed to affect egress, and all policies
// (whether or not they contain an ingress section) are assumed to affect
// ingress." Unknown types are no type.
func affects(np *networkingv1.NetworkPolicy, dir Direction) bool {
	if len(np.Spec.PolicyTypes) == 0 {
		return dir == Ingress || len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		if (t == networkingv1.PolicyTypeIngress && dir == Ingress) || (t == networkingv1.PolicyTypeEgress && dir == Egress) {
			return true
		}
	}
	return false
}

// rule is one entry of spec.ingress (peers from "from") or spec.egress
// (peers from "to").
type rule struct {
	peers []networkingv1.NetworkPolicyPeer
	ports []networkingv1.NetworkPolicyPort
}

// rulesOf returns the rules of np for dir, in their order in the spec.
func rulesOf(np *networkingv1.NetworkPolicy, dir Direction) []rule {
	var out []rule
	if dir == Ingress {
		for _, r := range np.Spec.Ingress {
			out = append(out, rule{peers: r.From, ports: r.Ports})
		}
		return out
	}
	for _, r := range np.Spec.Egress {
		out = append(out, rule{peers: r.To, ports: r.Ports})
	}
	return out
}

// selectsPod: "podSelector selects the pods to which this NetworkPolicy
// object applies ... An empty selector matches all pods in the policy's
// namespace." An invalid selector selects nothing.
func selectsPod(np *networkingv1.NetworkPolicy, pod *corev1.Pod) bool {
	return pod.Namespace == np.Namespace && selectorMatches(&np.Spec.PodSelector, pod.Labels)
}

func selectorMatches(ls *metav1.LabelSelector, l map[string]string) bool {
	sel, err := metav1.LabelSelectorAsSelector(ls)
	return err == nil && sel.Matches(labels.Set(l))
}

// anyPeerMatches: "If this field is empty or missing, this rule matches
// all sources [destinations] ... Items in this list are combined using a
// logical OR operation."
func anyPeerMatches(c *Cluster, np *networkingv1.NetworkPolicy, peers []networkingv1.NetworkPolicyPeer, addr netip.Addr, pod *corev1.Pod) bool {
	if len(peers) == 0 {
		return true
	}
	for i := range peers {
		if peerMatches(c, np, &peers[i], addr, pod) {
			return true
		}
	}
	return false
}

func peerMatches(c *Cluster, np *networkingv1.NetworkPolicy, peer *networkingv1.NetworkPolicyPeer, addr netip.Addr, pod *corev1.Pod) bool {
	if peer.IPBlock != nil {
		// "If this field is set then neither of the other fields can be."
		return peer.PodSelector == nil && peer.NamespaceSelector == nil && ipBlockContains(peer.IPBlock, addr)
	}
	if pod == nil {
		return false // selectors only ever match pods
	}
	switch {
	case peer.NamespaceSelector != nil:
		// "If podSelector is also set, then the NetworkPolicyPeer as a
		// whole selects the pods matching podSelector in the Namespaces
		// selected by NamespaceSelector. Otherwise it selects all pods in
		// the namespaces selected by namespaceSelector."
		if !selectorMatches(peer.NamespaceSelector, c.namespaceLabels(pod.Namespace)) {
			return false
		}
		return peer.PodSelector == nil || selectorMatches(peer.PodSelector, pod.Labels)
	case peer.PodSelector != nil:
		// "Otherwise it selects the pods matching podSelector in the
		// policy's own namespace."
		return pod.Namespace == np.Namespace && selectorMatches(peer.PodSelector, pod.Labels)
	}
	return false // an empty peer is invalid
}

// namespaceLabels returns a namespace's labels with
// kubernetes.io/metadata.name, which the API server sets on every
// namespace to its name. A namespace with no object here (not yet seen,
// or deleted under its pods) still has that name.
func (c *Cluster) namespaceLabels(name string) map[string]string {
	out := map[string]string{}
	for _, ns := range c.Namespaces {
		if ns != nil && ns.Name == name {
			for k, v := range ns.Labels {
				out[k] = v
			}
		}
	}
	out[corev1.LabelMetadataName] = name
	return out
}

// ipBlockContains checks addr against the block directly: inside the cidr
// and inside no except. Excepts that validation would reject (not a part
// of the cidr, or not parsing) exclude nothing.
func ipBlockContains(b *networkingv1.IPBlock, addr netip.Addr) bool {
	cidr, err := netip.ParsePrefix(b.CIDR)
	if err != nil || !cidr.Contains(addr) {
		return false
	}
	for _, e := range b.Except {
		except, err := netip.ParsePrefix(e)
		if err != nil || !isPartOf(except, cidr) {
			continue
		}
		if except.Contains(addr) {
			return false
		}
	}
	return true
}

// isPartOf reports whether every address of inner is in outer.
func isPartOf(inner, outer netip.Prefix) bool {
	return inner.Addr().Is4() == outer.Addr().Is4() && inner.Bits() >= outer.Bits() && outer.Contains(inner.Addr())
}

// anyPortMatches: "If this field is empty or missing, this rule matches all
// ports ... Each item in this list is combined using a logical OR."
func anyPortMatches(ports []networkingv1.NetworkPolicyPort, p Packet, portPod *corev1.Pod) bool {
	if len(ports) == 0 {
		return true
	}
	for i := range ports {
		if portMatches(&ports[i], p, portPod) {
			return true
		}
	}
	return false
}

func portMatches(np *networkingv1.NetworkPolicyPort, p Packet, portPod *corev1.Pod) bool {
	// "If not specified, this field defaults to TCP."
	protocol := corev1.ProtocolTCP
	if np.Protocol != nil {
		protocol = *np.Protocol
	}
	if protocol != p.Protocol {
		return false
	}
	if np.Port == nil {
		// "If this field is not provided, this matches all port names and
		// numbers." endPort "cannot be defined if the port field is not
		// defined".
		return np.EndPort == nil
	}
	if np.Port.Type == intstr.String {
		// endPort "cannot be defined if ... the port field is defined as a
		// named (string) port".
		return np.EndPort == nil && np.Port.StrVal != "" && portPod != nil && hasNamedPort(portPod, np.Port.StrVal, protocol, p.Port)
	}
	first, last := np.Port.IntVal, np.Port.IntVal
	if np.EndPort != nil {
		// "the range of ports from port to endPort if set, inclusive"
		last = *np.EndPort
	}
	if first < 1 || last < first || last > 65535 {
		return false
	}
	return first <= p.Port && p.Port <= last
}

// hasNamedPort reports whether a container of pod that serves the pod's
// network (its containers, and its sidecars: init containers with
// restartPolicy Always, which run for the pod's whole life) declares port
// number n under name for protocol.
func hasNamedPort(pod *corev1.Pod, name string, protocol corev1.Protocol, n int32) bool {
	var serving []corev1.Container
	serving = append(serving, pod.Spec.Containers...)
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			serving = append(serving, c)
		}
	}
	for _, c := range serving {
		for _, cp := range c.Ports {
			proto := cp.Protocol
			if proto == "" {
				proto = corev1.ProtocolTCP // ContainerPort.protocol "Defaults to TCP"
			}
			if cp.Name == name && proto == protocol && cp.ContainerPort == n {
				return true
			}
		}
	}
	return false
}

// OwnerOf returns the endpoint pod addr belongs to, or nil. When several
// endpoint pods claim addr (one is a stale object while the address is
// reused), the newest owns it: the latest creationTimestamp, ties broken
// by namespace then name ascending.
func (c *Cluster) OwnerOf(addr netip.Addr) *corev1.Pod {
	addr = addr.Unmap()
	var owner *corev1.Pod
	for _, pod := range c.Pods {
		if pod == nil || !IsEndpoint(pod) || !hasAddress(pod, addr) {
			continue
		}
		if owner == nil || ownsBefore(pod, owner) {
			owner = pod
		}
	}
	return owner
}

// ownsBefore reports whether a's claim on an address beats b's.
func ownsBefore(a, b *corev1.Pod) bool {
	ta, tb := a.CreationTimestamp.Time, b.CreationTimestamp.Time
	if !ta.Equal(tb) {
		return ta.After(tb)
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// IsEndpoint reports whether policies apply to pod: a pod on the host
// network has the node's addresses, a terminal one (Succeeded or Failed)
// may already have lost its address to another pod, and a pod without an
// address yet has nothing to match.
func IsEndpoint(pod *corev1.Pod) bool {
	terminal := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
	return !pod.Spec.HostNetwork && !terminal && len(Addresses(pod)) > 0
}

// Addresses returns the pod's addresses: status.podIPs, or status.podIP
// when podIPs is empty (podIPs[0] must equal podIP). IPv4-mapped IPv6
// addresses are their IPv4 address; what does not parse is no address.
func Addresses(pod *corev1.Pod) []netip.Addr {
	ips := make([]string, 0, len(pod.Status.PodIPs))
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		ips = append(ips, pod.Status.PodIP)
	}
	var out []netip.Addr
	for _, s := range ips {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap().WithZone(""))
		}
	}
	return out
}

func hasAddress(pod *corev1.Pod, addr netip.Addr) bool {
	for _, a := range Addresses(pod) {
		if a == addr {
			return true
		}
	}
	return false
}

func (c *Cluster) isNodeAddressOf(pod *corev1.Pod, addr netip.Addr) bool {
	for _, a := range c.NodeAddresses[pod.Spec.NodeName] {
		if a.Unmap() == addr {
			return true
		}
	}
	for _, node := range c.Nodes {
		if node != nil && node.Name == pod.Spec.NodeName && nodeHasAddress(node, addr) {
			return true
		}
	}
	return false
}

func keyOf(pod *corev1.Pod) string {
	if pod == nil {
		return ""
	}
	return pod.Namespace + "/" + pod.Name
}

func keyOfPolicy(np *networkingv1.NetworkPolicy) string { return np.Namespace + "/" + np.Name }

// Explain says in a few lines why the packet passes or not.
func (v Verdict) Explain() string {
	var b strings.Builder
	word := "DENIED"
	if v.Allowed {
		word = "ALLOWED"
	}
	fmt.Fprintf(&b, "%s: %s\n", v.Packet, word)
	if v.Self {
		who := "its source"
		if v.Egress.Pod != "" {
			who = v.Egress.Pod
		}
		fmt.Fprintf(&b, "  the connection never leaves %s (it reaches its own address), so no policy applies\n", who)
		return b.String()
	}
	explainSide(&b, Egress, "source", v.Egress)
	explainSide(&b, Ingress, "destination", v.Ingress)
	return b.String()
}

func explainSide(b *strings.Builder, dir Direction, end string, s Side) {
	switch {
	case s.Pod == "":
		fmt.Fprintf(b, "  %s: allowed (the %s is not a pod)\n", dir, end)
		return
	case s.FromNode:
		fmt.Fprintf(b, "  %s: allowed (traffic from the node of %s)\n", dir, s.Pod)
		return
	}
	verdict := "denied"
	if s.Allowed {
		verdict = "allowed"
	}
	for _, r := range s.ClusterRules {
		if r.Action == policyv1beta1.ClusterNetworkPolicyRuleActionPass {
			fmt.Fprintf(b, "  %s: passed on by %s\n", dir, r)
		}
	}
	switch s.Tier {
	case TierAdmin, TierBaseline:
		fmt.Fprintf(b, "  %s: %s for %s by %s\n", dir, verdict, s.Pod, s.ClusterRules[len(s.ClusterRules)-1])
	case TierNetworkPolicy:
		if s.Allowed {
			refs := make([]string, len(s.AllowedBy))
			for i, r := range s.AllowedBy {
				refs[i] = r.String()
			}
			fmt.Fprintf(b, "  %s: allowed for %s by %s\n", dir, s.Pod, strings.Join(refs, ", "))
		} else {
			fmt.Fprintf(b, "  %s: denied: %s is isolated by %s and no rule matches\n", dir, s.Pod, strings.Join(s.IsolatedBy, ", "))
		}
	default:
		fmt.Fprintf(b, "  %s: allowed (no policy isolates %s for %s)\n", dir, s.Pod, dir)
	}
}
