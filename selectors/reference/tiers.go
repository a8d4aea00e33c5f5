package reference

import (
	"fmt"
	"net/netip"
	"sort"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Tier is the tier of policy that decided one side of a connection.
type Tier string

// The tiers, in the order they are evaluated. TierNone is no decision: no
// tier said anything, and the Kubernetes default (allow) applies.
const (
	TierAdmin         Tier = "Admin"
	TierNetworkPolicy Tier = "NetworkPolicy"
	TierBaseline      Tier = "Baseline"
	TierNone          Tier = ""
)

// ClusterRuleRef names one rule of one ClusterNetworkPolicy and what it
// did to the packet.
type ClusterRuleRef struct {
	Tier      Tier
	Policy    string // the ClusterNetworkPolicy's name
	Priority  int32
	Direction Direction
	Index     int    // in spec.ingress or spec.egress
	Name      string // the rule's own name, "" when it has none
	Action    policyv1beta1.ClusterNetworkPolicyRuleAction
}

func (r ClusterRuleRef) String() string {
	s := fmt.Sprintf("%s ClusterNetworkPolicy %s (priority %d) %s[%d]", r.Tier, r.Policy, r.Priority, r.Direction, r.Index)
	if r.Name != "" {
		s += fmt.Sprintf(" %q", r.Name)
	}
	return s + ": " + string(r.Action)
}

// clusterTier walks the ClusterNetworkPolicies of one tier that select pod
// for dir, in the order the API defines ("Policies with lower priority
// values have higher precedence"; "a rule that appears at the top ... would
// take the highest precedence") and returns the rules that matched the
// packet until one decided: any Pass rules, then the deciding Accept or
// Deny rule. decided is false when the tier left the packet to the next
// tier (a Pass, or no rule matched).
//
// Two policies of one tier with the same priority are taken in name order:
// the API leaves ties to the implementation, and this is the order nftpol
// documents. Within the tier, a Pass ends the tier: "Skips all further
// ClusterNetworkPolicy rules in the current tier".
func clusterTier(c *Cluster, tier Tier, dir Direction, pod *corev1.Pod, peerAddr netip.Addr, peerPod, portPod *corev1.Pod, p Packet) (matched []ClusterRuleRef, decided bool) {
	for _, cnp := range c.clusterPoliciesOf(tier) {
		if !subjectSelects(c, &cnp.Spec.Subject, pod) {
			continue
		}
		for i, r := range clusterRulesOf(cnp, dir) {
			action, ok := r.matches(c, peerAddr, peerPod, portPod, p)
			if !ok {
				continue
			}
			matched = append(matched, ClusterRuleRef{Tier: tier, Policy: cnp.Name, Priority: cnp.Spec.Priority,
				Direction: dir, Index: i, Name: r.name, Action: action})
			if action == policyv1beta1.ClusterNetworkPolicyRuleActionPass {
				return matched, false
			}
			return matched, true // Accept or Deny
		}
	}
	return matched, false
}

// clusterPoliciesOf returns the policies of one tier, lowest priority
// first, equal priorities by name. A tier the API does not define is no
// tier: its policies apply nowhere.
func (c *Cluster) clusterPoliciesOf(tier Tier) []*policyv1beta1.ClusterNetworkPolicy {
	var out []*policyv1beta1.ClusterNetworkPolicy
	for _, cnp := range c.ClusterPolicies {
		// "Priority is a value from 0 to 1000": a policy outside it
		// applies nowhere, like one of an unknown tier.
		inRange := cnp != nil && cnp.Spec.Priority >= 0 && cnp.Spec.Priority <= 1000
		if inRange && string(cnp.Spec.Tier) == string(tier) {
			out = append(out, cnp)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Spec.Priority != out[j].Spec.Priority {
			return out[i].Spec.Priority < out[j].Spec.Priority
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// subjectSelects: "Exactly one field must be set." namespaces selects the
// pods of the namespaces it matches; pods "via namespace AND pod
// selectors". A subject with no field or both selects nothing (the API
// server refuses it). The pod is an endpoint already: "host-networked pods
// are not included in subject selection".
func subjectSelects(c *Cluster, s *policyv1beta1.ClusterNetworkPolicySubject, pod *corev1.Pod) bool {
	switch {
	case s.Namespaces != nil && s.Pods == nil:
		return selectorMatches(s.Namespaces, c.namespaceLabels(pod.Namespace))
	case s.Pods != nil && s.Namespaces == nil:
		return namespacedPodMatches(c, s.Pods, pod)
	}
	return false
}

// namespacedPodMatches: the pod's namespace matches namespaceSelector and
// the pod podSelector; "if empty, it selects all".
func namespacedPodMatches(c *Cluster, np *policyv1beta1.NamespacedPod, pod *corev1.Pod) bool {
	return selectorMatches(&np.NamespaceSelector, c.namespaceLabels(pod.Namespace)) && selectorMatches(&np.PodSelector, pod.Labels)
}

// clusterRule is one entry of spec.ingress (peers from "from") or
// spec.egress (peers from "to"), with the peer kinds of both read into one
// shape: ingress peers never set nodes, networks or domainNames.
type clusterRule struct {
	name      string
	action    policyv1beta1.ClusterNetworkPolicyRuleAction
	peers     []clusterPeer
	protocols []policyv1beta1.ClusterNetworkPolicyProtocol
}

type clusterPeer struct {
	namespaces  *metav1.LabelSelector
	pods        *policyv1beta1.NamespacedPod
	nodes       *metav1.LabelSelector
	networks    []policyv1beta1.CIDR
	domainNames []policyv1beta1.DomainName
}

// fieldsSet counts the peer's kinds: "Exactly one of the fields must be
// set for a given peer".
func (pe clusterPeer) fieldsSet() int {
	n := 0
	for _, set := range []bool{pe.namespaces != nil, pe.pods != nil, pe.nodes != nil, pe.networks != nil, pe.domainNames != nil} {
		if set {
			n++
		}
	}
	return n
}

func clusterRulesOf(cnp *policyv1beta1.ClusterNetworkPolicy, dir Direction) []clusterRule {
	var out []clusterRule
	if dir == Ingress {
		for _, r := range cnp.Spec.Ingress {
			cr := clusterRule{name: r.Name, action: r.Action, protocols: r.Protocols}
			for _, pe := range r.From {
				cr.peers = append(cr.peers, clusterPeer{namespaces: pe.Namespaces, pods: pe.Pods})
			}
			out = append(out, cr)
		}
		return out
	}
	for _, r := range cnp.Spec.Egress {
		cr := clusterRule{name: r.Name, action: r.Action, protocols: r.Protocols}
		for _, pe := range r.To {
			cr.peers = append(cr.peers, clusterPeer{namespaces: pe.Namespaces, pods: pe.Pods, nodes: pe.Nodes, networks: pe.Networks, domainNames: pe.DomainNames})
		}
		out = append(out, cr)
	}
	return out
}

// matches reports whether the rule applies to the packet and with which
// action. A peer with no field set is, as the API says, a CRD of another
// version: fail closed, which "For "Accept" rules ... means:
// "treat the rule as matching no traffic". For "Deny" and "Pass" rules ...
// "treat the rule as a 'Deny all' rule"": the rule then denies every packet,
// whatever its peers and protocols.
//
// An action the API does not define fails closed too: the rule denies
// every packet (it may have meant to deny; it must not allow).
func (r clusterRule) matches(c *Cluster, peerAddr netip.Addr, peerPod, portPod *corev1.Pod, p Packet) (policyv1beta1.ClusterNetworkPolicyRuleAction, bool) {
	switch r.action {
	case policyv1beta1.ClusterNetworkPolicyRuleActionAccept, policyv1beta1.ClusterNetworkPolicyRuleActionDeny, policyv1beta1.ClusterNetworkPolicyRuleActionPass:
	default:
		return policyv1beta1.ClusterNetworkPolicyRuleActionDeny, true
	}
	for _, pe := range r.peers {
		if pe.fieldsSet() != 0 {
			continue
		}
		if r.action == policyv1beta1.ClusterNetworkPolicyRuleActionAccept {
			return r.action, false
		}
		return policyv1beta1.ClusterNetworkPolicyRuleActionDeny, true
	}
	peerOK := false
	for _, pe := range r.peers {
		if clusterPeerMatches(c, pe, peerAddr, peerPod) {
			peerOK = true
			break
		}
	}
	// "If unspecified, protocol-specific attributes will not be used to
	// match traffic."
	return r.action, peerOK && (len(r.protocols) == 0 || anyProtocolMatches(r.protocols, p, portPod))
}

// clusterPeerMatches checks one peer of exactly one kind; one with
// several ("Exactly one of the fields must be set") matches nothing.
func clusterPeerMatches(c *Cluster, pe clusterPeer, addr netip.Addr, pod *corev1.Pod) bool {
	switch {
	case pe.fieldsSet() != 1:
		return false
	case pe.namespaces != nil:
		// "select all pods within a set of Namespaces": pod is the
		// endpoint owning the address, never a host-network pod.
		return pod != nil && selectorMatches(pe.namespaces, c.namespaceLabels(pod.Namespace))
	case pe.pods != nil:
		return pod != nil && namespacedPodMatches(c, pe.pods, pod)
	case pe.nodes != nil:
		// "selects the nodeIPs ... present in the node.Status.Addresses
		// field"; "if present but empty, it selects all Nodes".
		for _, node := range c.Nodes {
			if node != nil && selectorMatches(pe.nodes, node.Labels) && nodeHasAddress(node, addr) {
				return true
			}
		}
		return false
	case pe.networks != nil:
		for _, n := range pe.networks {
			// "should be provided in the CIDR format"; what does not
			// parse matches nothing. The CRD also demands the address
			// be the network's own (masked): one with host bits set is
			// read as its network.
			prefix, err := netip.ParsePrefix(string(n))
			if err == nil && prefix.Masked().Contains(addr) {
				return true
			}
		}
		return false
	}
	// domainNames: names cannot be matched against addresses by a packet
	// filter (nftpol reports them as not supported), so such a peer
	// matches nothing. The API allows them only in Accept rules, where
	// matching nothing is the closed side.
	return false
}

// nodeHasAddress: the node IPs of status.addresses, its InternalIP and
// ExternalIP entries (the other types name the node, Hostname and
// InternalDNS, even when their value happens to be an address).
func nodeHasAddress(node *corev1.Node, addr netip.Addr) bool {
	for _, na := range node.Status.Addresses {
		if na.Type != corev1.NodeInternalIP && na.Type != corev1.NodeExternalIP {
			continue
		}
		if a, err := netip.ParseAddr(na.Address); err == nil && a.Unmap().WithZone("") == addr {
			return true
		}
	}
	return false
}

// anyProtocolMatches: any entry matching is enough (the list has the
// same OR reading as NetworkPolicy's ports).
func anyProtocolMatches(protocols []policyv1beta1.ClusterNetworkPolicyProtocol, p Packet, portPod *corev1.Pod) bool {
	for i := range protocols {
		if protocolMatches(&protocols[i], p, portPod) {
			return true
		}
	}
	return false
}

// protocolMatches: "Exactly one field must be set"; one with none or
// several matches nothing.
func protocolMatches(pr *policyv1beta1.ClusterNetworkPolicyProtocol, p Packet, portPod *corev1.Pod) bool {
	set := 0
	for _, s := range []bool{pr.TCP != nil, pr.UDP != nil, pr.SCTP != nil, pr.DestinationNamedPort != ""} {
		if s {
			set++
		}
	}
	if set != 1 {
		return false
	}
	switch {
	case pr.TCP != nil:
		return p.Protocol == corev1.ProtocolTCP && destinationPortMatches(pr.TCP.DestinationPort, p.Port)
	case pr.UDP != nil:
		return p.Protocol == corev1.ProtocolUDP && destinationPortMatches(pr.UDP.DestinationPort, p.Port)
	case pr.SCTP != nil:
		return p.Protocol == corev1.ProtocolSCTP && destinationPortMatches(pr.SCTP.DestinationPort, p.Port)
	}
	// "selects a destination port on a pod based on the ContainerPort
	// name": the destination pod's, with the protocol its port declares.
	return portPod != nil && hasNamedPort(portPod, pr.DestinationNamedPort, p.Protocol, p.Port)
}

// destinationPortMatches: "You must specify either Port or Range." No
// destinationPort at all (the API refuses it) is every port of the
// protocol. A number outside 1-65535, a range ending before it starts, or
// both or neither set, matches nothing. A range is inclusive: "from
// Start value to End value".
func destinationPortMatches(dp *policyv1beta1.Port, port int32) bool {
	if dp == nil {
		return true
	}
	switch {
	case dp.Number != 0 && dp.Range == nil:
		return dp.Number >= 1 && dp.Number <= 65535 && dp.Number == port
	case dp.Number == 0 && dp.Range != nil:
		first, last := dp.Range.Start, dp.Range.End
		return first >= 1 && first <= last && last <= 65535 && first <= port && port <= last
	}
	return false
}
