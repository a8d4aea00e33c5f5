package selectors

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// This file parses a ClusterNetworkPolicy (policy.networking.k8s.io/v1beta1)
// into the form the model builder resolves, like parse.go does for a
// NetworkPolicy. Peers reuse the NetworkPolicy peer kinds where the
// membership is the same, so that their address sets are shared:
//
//	namespaces: S               → "nsel=S|pod=*"   (a NetworkPolicy peer with
//	                                                 namespaceSelector S alone)
//	pods: {namespaceSelector S,
//	       podSelector P}       → "nsel=S|pod=P"
//	networks: [one CIDR]        → "cidr=C"          (an ipBlock without except)
//	networks: [several]         → "cidrs=C1,C2,..." (their union)
//	nodes: N                    → "nodes=N"          (node addresses)
//
// domainNames cannot be enforced with address sets: such a peer is
// reported and matches nothing (domainNames are only allowed in Accept
// rules, so matching nothing is the safe reading). A peer with no field
// set (an object from a newer API than this agent knows) fails closed as
// the API asks: an Accept rule with it matches nothing at all, a Deny or
// Pass rule becomes a Deny of everything.

// clusterPolicy is a parsed ClusterNetworkPolicy.
type clusterPolicy struct {
	name     string
	tier     Tier
	priority int32
	// subjectNs and subjectPod select the subject pods; subjectPod nil
	// means every pod of the selected namespaces. subjectNs nil: invalid,
	// selects nothing.
	subjectNs, subjectPod labels.Selector
	subjectID             string
	rules                 [2][]clusterRule // by Direction
	problems              []string
	audit                 bool // ModeAnnotation says audit
}

type clusterRule struct {
	name   string
	index  int
	action Action
	// allPeers: a Deny/Pass rule failed closed to match every peer.
	allPeers bool
	peers    []peer
	allPorts bool
	ports    []port
}

// ParseClusterPolicyProblems returns what of cnp cannot be enforced as
// written, from the object alone: the same on every node, so that it can
// go into the object's status without agents disagreeing.
func ParseClusterPolicyProblems(cnp *cnpv1beta1.ClusterNetworkPolicy) []string {
	return parseClusterPolicy(cnp).problems
}

func parseClusterPolicy(cnp *cnpv1beta1.ClusterNetworkPolicy) *clusterPolicy {
	cp := &clusterPolicy{name: cnp.Name, priority: cnp.Spec.Priority}
	audit, problem := policyMode(cnp.Annotations)
	cp.audit = audit
	if problem != "" {
		cp.problem("%s", problem)
	}
	switch cnp.Spec.Tier {
	case cnpv1beta1.AdminTier:
		cp.tier = TierAdmin
	case cnpv1beta1.BaselineTier:
		cp.tier = TierBaseline
	default:
		cp.problem("tier %q is unknown, the policy selects no pod", cnp.Spec.Tier)
		return cp
	}
	if cnp.Spec.Priority < 0 || cnp.Spec.Priority > 1000 {
		cp.problem("priority %d is outside 0-1000, the policy selects no pod", cnp.Spec.Priority)
		return cp
	}
	subj := cnp.Spec.Subject
	switch {
	case subj.Namespaces != nil && subj.Pods != nil:
		cp.problem("subject sets both namespaces and pods, the policy selects no pod")
		return cp
	case subj.Namespaces != nil:
		ns, err := metav1.LabelSelectorAsSelector(subj.Namespaces)
		if err != nil {
			cp.problem("subject namespaces selector is invalid, the policy selects no pod: %v", err)
			return cp
		}
		cp.subjectNs = ns
		cp.subjectID = "nsel=" + selectorID(ns) + "|pod=*"
	case subj.Pods != nil:
		ns, err := metav1.LabelSelectorAsSelector(&subj.Pods.NamespaceSelector)
		if err != nil {
			cp.problem("subject pods namespaceSelector is invalid, the policy selects no pod: %v", err)
			return cp
		}
		pod, err := metav1.LabelSelectorAsSelector(&subj.Pods.PodSelector)
		if err != nil {
			cp.problem("subject pods podSelector is invalid, the policy selects no pod: %v", err)
			return cp
		}
		cp.subjectNs, cp.subjectPod = ns, pod
		cp.subjectID = "nsel=" + selectorID(ns) + "|pod=" + selectorID(pod)
	default:
		cp.problem("subject sets neither namespaces nor pods, the policy selects no pod")
		return cp
	}

	for i := range cnp.Spec.Ingress {
		r := &cnp.Spec.Ingress[i]
		peers := make([]cnpv1beta1.ClusterNetworkPolicyEgressPeer, len(r.From))
		for j, f := range r.From {
			peers[j] = cnpv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: f.Namespaces, Pods: f.Pods}
		}
		if cr, ok := cp.parseRule(Ingress, i, r.Name, r.Action, peers, r.Protocols); ok {
			cp.rules[Ingress] = append(cp.rules[Ingress], cr)
		}
	}
	for i := range cnp.Spec.Egress {
		r := &cnp.Spec.Egress[i]
		if cr, ok := cp.parseRule(Egress, i, r.Name, r.Action, r.To, r.Protocols); ok {
			cp.rules[Egress] = append(cp.rules[Egress], cr)
		}
	}
	return cp
}

func (cp *clusterPolicy) problem(format string, args ...any) {
	cp.problems = append(cp.problems, fmt.Sprintf(format, args...))
}

// ruleRef names a rule in problems: its name when it has one.
func ruleRef(dir Direction, idx int, name string) string {
	if name != "" {
		return fmt.Sprintf("%s rule %q", dir, name)
	}
	return fmt.Sprintf("%s rule %d", dir, idx)
}

// parseRule parses one rule; false when the rule can match nothing
// whatever the cluster holds.
func (cp *clusterPolicy) parseRule(dir Direction, idx int, name string, action cnpv1beta1.ClusterNetworkPolicyRuleAction,
	peers []cnpv1beta1.ClusterNetworkPolicyEgressPeer, protocols []cnpv1beta1.ClusterNetworkPolicyProtocol) (clusterRule, bool) {
	ref := ruleRef(dir, idx, name)
	r := clusterRule{name: name, index: idx}
	switch action {
	case cnpv1beta1.ClusterNetworkPolicyRuleActionAccept:
		r.action = ActionAccept
	case cnpv1beta1.ClusterNetworkPolicyRuleActionDeny:
		r.action = ActionDeny
	case cnpv1beta1.ClusterNetworkPolicyRuleActionPass:
		r.action = ActionPass
	default:
		// Unknown actions fail closed like unknown peers: a rule that
		// may have meant to deny must not silently allow.
		cp.problem("%s: action %q is unknown, the rule denies everything", ref, action)
		return clusterRule{name: name, index: idx, action: ActionDeny, allPeers: true, allPorts: true}, true
	}
	if len(peers) == 0 {
		cp.problem("%s has no peer and matches nothing", ref)
		return r, false
	}
	failClosed := false
	for i := range peers {
		pe, closed := cp.parsePeer(ref, &peers[i], dir)
		if closed {
			failClosed = true
			continue
		}
		if pe.kind != peerNone {
			r.peers = append(r.peers, pe)
		}
	}
	if failClosed && r.action != ActionAccept {
		cp.problem("%s: a peer sets no field this agent knows, the %s rule denies everything", ref, r.action)
		return clusterRule{name: name, index: idx, action: ActionDeny, allPeers: true, allPorts: true}, true
	}
	if failClosed {
		// The API's reading of fail closed for an Accept rule: the whole
		// rule matches no traffic, not only the peer it cannot read.
		cp.problem("%s: a peer sets no field this agent knows, the Accept rule matches nothing", ref)
		return r, false
	}
	if len(r.peers) == 0 {
		return r, false
	}

	r.allPorts = len(protocols) == 0
	for i := range protocols {
		if pt, ok := cp.parseProtocol(ref, &protocols[i]); ok {
			r.ports = append(r.ports, pt)
		}
	}
	if !r.allPorts && len(r.ports) == 0 {
		return r, false
	}
	return r, true
}

// parsePeer parses one peer. closed reports a peer with no known field,
// which fails closed.
func (cp *clusterPolicy) parsePeer(ref string, pe *cnpv1beta1.ClusterNetworkPolicyEgressPeer, dir Direction) (peer, bool) {
	set := 0
	for _, has := range []bool{pe.Namespaces != nil, pe.Pods != nil, pe.Nodes != nil, len(pe.Networks) > 0, len(pe.DomainNames) > 0} {
		if has {
			set++
		}
	}
	if set == 0 {
		return peer{}, true
	}
	if set > 1 {
		cp.problem("%s: a peer sets more than one field and matches nothing", ref)
		return peer{kind: peerNone}, false
	}
	switch {
	case pe.Namespaces != nil:
		ns, err := metav1.LabelSelectorAsSelector(pe.Namespaces)
		if err != nil {
			cp.problem("%s: namespaces selector is invalid, the peer matches nothing: %v", ref, err)
			return peer{kind: peerNone}, false
		}
		return peer{kind: peerNsPods, nsSel: ns, id: "nsel=" + selectorID(ns) + "|pod=*"}, false
	case pe.Pods != nil:
		ns, err := metav1.LabelSelectorAsSelector(&pe.Pods.NamespaceSelector)
		if err != nil {
			cp.problem("%s: pods namespaceSelector is invalid, the peer matches nothing: %v", ref, err)
			return peer{kind: peerNone}, false
		}
		pod, err := metav1.LabelSelectorAsSelector(&pe.Pods.PodSelector)
		if err != nil {
			cp.problem("%s: pods podSelector is invalid, the peer matches nothing: %v", ref, err)
			return peer{kind: peerNone}, false
		}
		return peer{kind: peerNsPods, nsSel: ns, podSel: pod, id: "nsel=" + selectorID(ns) + "|pod=" + selectorID(pod)}, false
	case pe.Nodes != nil:
		if dir != Egress {
			cp.problem("%s: nodes peers exist only for egress, the peer matches nothing", ref)
			return peer{kind: peerNone}, false
		}
		sel, err := metav1.LabelSelectorAsSelector(pe.Nodes)
		if err != nil {
			cp.problem("%s: nodes selector is invalid, the peer matches nothing: %v", ref, err)
			return peer{kind: peerNone}, false
		}
		return peer{kind: peerNodes, nsSel: sel, id: "nodes=" + selectorID(sel)}, false
	case len(pe.Networks) > 0:
		if dir != Egress {
			cp.problem("%s: networks peers exist only for egress, the peer matches nothing", ref)
			return peer{kind: peerNone}, false
		}
		return cp.parseNetworks(ref, pe.Networks), false
	}
	cp.problem("%s: domainNames are not supported (they cannot be enforced with address sets), the peer matches nothing", ref)
	return peer{kind: peerNone}, false
}

// parseNetworks makes one peer of a networks list: the union of its
// CIDRs. A single CIDR has the ID of an ipBlock with that cidr alone, so
// NetworkPolicies and ClusterNetworkPolicies share the set.
func (cp *clusterPolicy) parseNetworks(ref string, networks []cnpv1beta1.CIDR) peer {
	var prefixes []netip.Prefix
	for _, n := range networks {
		p, err := netip.ParsePrefix(strings.TrimSpace(string(n)))
		if err != nil {
			cp.problem("%s: network %q does not parse and is ignored", ref, n)
			continue
		}
		prefixes = append(prefixes, p.Masked())
	}
	if len(prefixes) == 0 {
		return peer{kind: peerNone}
	}
	sort.Slice(prefixes, func(i, j int) bool {
		if c := prefixes[i].Addr().Compare(prefixes[j].Addr()); c != 0 {
			return c < 0
		}
		return prefixes[i].Bits() < prefixes[j].Bits()
	})
	var names []string
	var ranges []AddrRange
	for i, p := range prefixes {
		if i > 0 && p == prefixes[i-1] {
			continue
		}
		names = append(names, p.String())
		ranges = append(ranges, prefixRange(p))
	}
	id := "cidr=" + names[0]
	if len(names) > 1 {
		id = "cidrs=" + strings.Join(names, ",")
	}
	return peer{kind: peerIPBlock, block: ipBlock{ranges: unionRanges(ranges)}, id: id}
}

// unionRanges merges ranges sorted by First into sorted disjoint ranges
// (adjacent ones joined), as an interval set needs.
func unionRanges(rs []AddrRange) []AddrRange {
	sort.Slice(rs, func(i, j int) bool {
		if rs[i].First.BitLen() != rs[j].First.BitLen() {
			return rs[i].First.BitLen() < rs[j].First.BitLen()
		}
		return rs[i].First.Less(rs[j].First)
	})
	var out []AddrRange
	for _, r := range rs {
		if n := len(out); n > 0 {
			last := &out[n-1]
			if last.Last.BitLen() == r.First.BitLen() && (!last.Last.Less(r.First) || last.Last.Next() == r.First) {
				if last.Last.Less(r.Last) {
					last.Last = r.Last
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}

func (cp *clusterPolicy) parseProtocol(ref string, p *cnpv1beta1.ClusterNetworkPolicyProtocol) (port, bool) {
	set := 0
	for _, has := range []bool{p.TCP != nil, p.UDP != nil, p.SCTP != nil, p.DestinationNamedPort != ""} {
		if has {
			set++
		}
	}
	if set != 1 {
		cp.problem("%s: a protocol entry must set exactly one of tcp, udp, sctp, destinationNamedPort; it matches nothing", ref)
		return port{}, false
	}
	var proto Protocol
	var dp *cnpv1beta1.Port
	switch {
	case p.TCP != nil:
		proto, dp = ProtocolTCP, p.TCP.DestinationPort
	case p.UDP != nil:
		proto, dp = ProtocolUDP, p.UDP.DestinationPort
	case p.SCTP != nil:
		proto, dp = ProtocolSCTP, p.SCTP.DestinationPort
	default:
		// The API's named port has no protocol: the name is looked up
		// among the pod's container ports of every protocol.
		return port{name: p.DestinationNamedPort}, true
	}
	if dp == nil {
		return port{protocol: proto, first: 0, last: 65535}, true
	}
	first, last := dp.Number, dp.Number
	if dp.Range != nil {
		if dp.Number != 0 {
			cp.problem("%s: %s destinationPort sets both number and range; it matches nothing", ref, proto)
			return port{}, false
		}
		first, last = dp.Range.Start, dp.Range.End
	}
	if first < 1 || first > 65535 || last < first || last > 65535 {
		cp.problem("%s: %s port range %d-%d is invalid, it matches nothing", ref, proto, first, last)
		return port{}, false
	}
	return port{protocol: proto, first: uint16(first), last: uint16(last)}, true
}
