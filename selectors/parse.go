package selectors

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// This file parses a NetworkPolicy into the form the model builder
// resolves: selectors compiled by apimachinery, ipBlocks as address ranges
// (the cidr minus its excepts, the shape an interval set needs), ports as
// numbers, ranges or names, policy types defaulted. Only the builder reads
// it: the reference evaluator (selectors/reference) reads the API objects
// on its own, so that a misreading here shows up as a disagreement instead
// of being shared by the oracle.

type policy struct {
	key       string
	namespace string
	podSel    labels.Selector // nil: invalid selector, selects nothing
	types     [2]bool         // by Direction
	rules     [2][]rule       // by Direction
	problems  []string
	audit     bool // ModeAnnotation says audit
}

type rule struct {
	allPeers bool
	peers    []peer
	allPorts bool
	ports    []port
	// resolved is what the model's rule is, once a build resolved it: it
	// is a function of the rule alone (set IDs, port ranges, the ID of
	// the named-port set), only the sets' contents change from build to
	// build (see modelBuilder.rule).
	resolved *resolvedRule
}

type peerKind uint8

const (
	peerNone    peerKind = iota // invalid: matches nothing
	peerPods                    // pods of the policy's namespace
	peerNsPods                  // pods of matching namespaces
	peerIPBlock                 // addresses
	peerNodes                   // node addresses (nsSel selects the nodes)
)

type peer struct {
	kind  peerKind
	nsSel labels.Selector // peerNsPods
	// podSel is nil for "every pod" in the peer's namespaces.
	podSel labels.Selector
	block  ipBlock
	// id identifies what defines membership; equal peers share one set.
	id string
}

type ipBlock struct {
	ranges []AddrRange // the CIDR minus its excepts
}

func (b ipBlock) contains(a netip.Addr) bool {
	for _, r := range b.ranges {
		if r.First.BitLen() == a.BitLen() && r.First.Compare(a) <= 0 && a.Compare(r.Last) <= 0 {
			return true
		}
	}
	return false
}

type port struct {
	protocol    Protocol
	first, last uint16
	name        string // set for a named port
}

// parsePolicy parses one policy. It never fails: parts that cannot be
// enforced are recorded as problems and match nothing.
func parsePolicy(np *networkingv1.NetworkPolicy) *policy {
	p := &policy{key: np.Namespace + "/" + np.Name, namespace: np.Namespace}
	audit, problem := policyMode(np.Annotations)
	p.audit = audit
	if problem != "" {
		p.problem("%s", problem)
	}
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		p.problem("podSelector is invalid, the policy selects no pod: %v", err)
	} else {
		p.podSel = sel
	}

	if len(np.Spec.PolicyTypes) == 0 {
		p.types[Ingress] = true
		p.types[Egress] = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			p.types[Ingress] = true
		case networkingv1.PolicyTypeEgress:
			p.types[Egress] = true
		default:
			p.problem("unknown policyType %q is ignored", t)
		}
	}

	if p.types[Ingress] {
		for i := range np.Spec.Ingress {
			r := &np.Spec.Ingress[i]
			p.rules[Ingress] = append(p.rules[Ingress], p.parseRule(r.From, r.Ports))
		}
	}
	if p.types[Egress] {
		for i := range np.Spec.Egress {
			r := &np.Spec.Egress[i]
			p.rules[Egress] = append(p.rules[Egress], p.parseRule(r.To, r.Ports))
		}
	}
	return p
}

func (p *policy) problem(format string, args ...any) {
	p.problems = append(p.problems, fmt.Sprintf(format, args...))
}

func (p *policy) parseRule(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) rule {
	r := rule{allPeers: len(peers) == 0, allPorts: len(ports) == 0}
	for i := range peers {
		r.peers = append(r.peers, p.parsePeer(&peers[i]))
	}
	for i := range ports {
		if pt, ok := p.parsePort(&ports[i]); ok {
			r.ports = append(r.ports, pt)
		}
	}
	return r
}

// selectorID is the canonical text of a selector ("*" for everything).
func selectorID(s labels.Selector) string {
	if s == nil || s.Empty() {
		return "*"
	}
	return s.String()
}

func (p *policy) parsePeer(np *networkingv1.NetworkPolicyPeer) peer {
	switch {
	case np.IPBlock != nil:
		if np.PodSelector != nil || np.NamespaceSelector != nil {
			p.problem("a peer with ipBlock and a selector matches nothing")
			return peer{kind: peerNone}
		}
		block, id, problems := parseIPBlock(np.IPBlock)
		for _, pr := range problems {
			p.problem("%s", pr)
		}
		if len(block.ranges) == 0 && len(problems) > 0 {
			return peer{kind: peerNone}
		}
		return peer{kind: peerIPBlock, block: block, id: id}
	case np.NamespaceSelector != nil:
		nsSel, err := metav1.LabelSelectorAsSelector(np.NamespaceSelector)
		if err != nil {
			p.problem("namespaceSelector is invalid, the peer matches nothing: %v", err)
			return peer{kind: peerNone}
		}
		pe := peer{kind: peerNsPods, nsSel: nsSel}
		if np.PodSelector != nil {
			podSel, err := metav1.LabelSelectorAsSelector(np.PodSelector)
			if err != nil {
				p.problem("podSelector of a peer is invalid, the peer matches nothing: %v", err)
				return peer{kind: peerNone}
			}
			pe.podSel = podSel
		}
		pe.id = "nsel=" + selectorID(nsSel) + "|pod=" + selectorID(pe.podSel)
		return pe
	case np.PodSelector != nil:
		podSel, err := metav1.LabelSelectorAsSelector(np.PodSelector)
		if err != nil {
			p.problem("podSelector of a peer is invalid, the peer matches nothing: %v", err)
			return peer{kind: peerNone}
		}
		return peer{kind: peerPods, podSel: podSel, id: "ns=" + p.namespace + "|pod=" + selectorID(podSel)}
	}
	// The API server rejects an empty peer; treat it as matching nothing.
	p.problem("a peer with no selector and no ipBlock matches nothing")
	return peer{kind: peerNone}
}

func (p *policy) parsePort(np *networkingv1.NetworkPolicyPort) (port, bool) {
	var proto Protocol = ProtocolTCP
	if np.Protocol != nil {
		var ok bool
		if proto, ok = protocolOf(*np.Protocol); !ok {
			p.problem("protocol %q is not supported, the port matches nothing", *np.Protocol)
			return port{}, false
		}
	}
	if np.Port == nil {
		if np.EndPort != nil {
			// The API server refuses endPort without port.
			p.problem("endPort without port matches nothing")
			return port{}, false
		}
		return port{protocol: proto, first: 0, last: 65535}, true
	}
	if name := np.Port.StrVal; np.Port.Type == intstr.String {
		if np.EndPort != nil {
			p.problem("endPort with the named port %q matches nothing", name)
			return port{}, false
		}
		if name == "" {
			p.problem("an empty port name matches nothing")
			return port{}, false
		}
		return port{protocol: proto, name: name}, true
	}
	first := int(np.Port.IntVal)
	last := first
	if np.EndPort != nil {
		last = int(*np.EndPort)
	}
	if first < 1 || first > 65535 || last < first || last > 65535 {
		p.problem("port range %d-%d is invalid, it matches nothing", first, last)
		return port{}, false
	}
	return port{protocol: proto, first: uint16(first), last: uint16(last)}, true
}

// parseIPBlock returns the block's ranges (CIDR minus excepts) and its
// canonical id. An except outside the CIDR, or of the other family,
// removes nothing and is reported.
func parseIPBlock(b *networkingv1.IPBlock) (ipBlock, string, []string) {
	var problems []string
	cidr, err := netip.ParsePrefix(strings.TrimSpace(b.CIDR))
	if err != nil {
		return ipBlock{}, "", []string{fmt.Sprintf("ipBlock cidr %q does not parse, the peer matches nothing", b.CIDR)}
	}
	cidr = cidr.Masked()
	ranges := []AddrRange{prefixRange(cidr)}
	var excepts []string
	for _, e := range b.Except {
		ex, err := netip.ParsePrefix(strings.TrimSpace(e))
		if err != nil {
			problems = append(problems, fmt.Sprintf("ipBlock except %q does not parse and is ignored", e))
			continue
		}
		ex = ex.Masked()
		if ex.Addr().BitLen() != cidr.Addr().BitLen() || ex.Bits() < cidr.Bits() || !cidr.Contains(ex.Addr()) {
			problems = append(problems, fmt.Sprintf("ipBlock except %s is not inside cidr %s and removes nothing", ex, cidr))
			continue
		}
		excepts = append(excepts, ex.String())
		ranges = subtractRange(ranges, prefixRange(ex))
	}
	sort.Strings(excepts)
	id := "cidr=" + cidr.String()
	if len(excepts) > 0 {
		id += "|except=" + strings.Join(excepts, ",")
	}
	return ipBlock{ranges: ranges}, id, problems
}

// prefixRange returns the first and last address of a prefix.
func prefixRange(p netip.Prefix) AddrRange {
	first := p.Masked().Addr()
	b := first.AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 1 << (7 - uint(i%8))
	}
	last, _ := netip.AddrFromSlice(b)
	return AddrRange{First: first, Last: last}
}

// subtractRange removes cut from every range of rs (sorted, disjoint).
func subtractRange(rs []AddrRange, cut AddrRange) []AddrRange {
	var out []AddrRange
	for _, r := range rs {
		if r.First.BitLen() != cut.First.BitLen() || cut.Last.Less(r.First) || r.Last.Less(cut.First) {
			out = append(out, r)
			continue
		}
		if r.First.Less(cut.First) {
			out = append(out, AddrRange{First: r.First, Last: cut.First.Prev()})
		}
		if cut.Last.Less(r.Last) {
			out = append(out, AddrRange{First: cut.Last.Next(), Last: r.Last})
		}
	}
	return out
}
