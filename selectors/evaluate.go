package selectors

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// Packet is the first packet of a connection, as a policy sees it.
type Packet struct {
	Src, Dst netip.Addr
	Protocol Protocol
	Port     uint16 // destination port
}

func (p Packet) String() string {
	return fmt.Sprintf("%s -> %s %s/%d", p.Src, p.Dst, p.Protocol, p.Port)
}

// RuleRef names one rule of one policy: its index in spec.ingress or
// spec.egress.
type RuleRef struct {
	Policy    string
	Direction Direction
	Index     int
}

func (r RuleRef) String() string {
	return fmt.Sprintf("%s %s[%d]", r.Policy, r.Direction, r.Index)
}

// DirectionVerdict is the decision of one side: egress of the source pod
// or ingress of the destination pod.
type DirectionVerdict struct {
	// Pod is "namespace/name" of the endpoint pod on this side, "" if the
	// address is no pod's.
	Pod string
	// Isolated is true when some policy isolates Pod in this direction;
	// IsolatedBy lists those policies.
	Isolated   bool
	IsolatedBy []string
	Allowed    bool
	// AllowedBy lists the rules that match when Isolated and Allowed.
	AllowedBy []RuleRef
	// FromNode is true when ingress is allowed because the packet comes
	// from the pod's own node.
	FromNode bool
}

// Verdict is the decision on a packet: both sides must allow it.
type Verdict struct {
	Packet  Packet
	Allowed bool
	Egress  DirectionVerdict
	Ingress DirectionVerdict
}

// Evaluate decides one packet by reading the policies directly, pod by pod
// and rule by rule. It is the reference the compiled ruleset is tested
// against, and what `nftpol explain` prints; it is written for clarity,
// not speed.
func Evaluate(s *State, p Packet) Verdict {
	p.Src, p.Dst = p.Src.Unmap(), p.Dst.Unmap()
	ix := newIndex(s)
	var policies []*policy
	for _, np := range s.Policies {
		if np != nil {
			policies = append(policies, compilePolicy(np))
		}
	}
	sort.Slice(policies, func(i, j int) bool { return policies[i].key < policies[j].key })

	src, dst := ix.podByIP()[p.Src], ix.podByIP()[p.Dst]
	v := Verdict{Packet: p}
	v.Egress = decide(ix, policies, Egress, src, p.Dst, dst, p)
	if dst != nil && fromOwnNode(s, dst, p.Src) {
		v.Ingress = DirectionVerdict{Pod: dst.Key(), Allowed: true, FromNode: true}
	} else {
		v.Ingress = decide(ix, policies, Ingress, dst, p.Src, src, p)
	}
	v.Allowed = v.Egress.Allowed && v.Ingress.Allowed
	return v
}

func fromOwnNode(s *State, pod *Pod, src netip.Addr) bool {
	for _, ip := range s.NodeIPs[pod.NodeName] {
		if ip == src {
			return true
		}
	}
	return false
}

// decide applies the policies selecting pod in direction dir; remoteIP and
// remotePod are the other end. Named ports resolve on the destination pod.
func decide(ix *index, policies []*policy, dir Direction, pod *Pod, remoteIP netip.Addr, remotePod *Pod, p Packet) DirectionVerdict {
	if pod == nil {
		return DirectionVerdict{Allowed: true}
	}
	out := DirectionVerdict{Pod: pod.Key()}
	portPod := remotePod // egress: the destination is the remote end
	if dir == Ingress {
		portPod = pod
	}
	for _, cp := range policies {
		if !cp.types[dir] || !cp.selectsPod(pod) {
			continue
		}
		out.Isolated = true
		out.IsolatedBy = append(out.IsolatedBy, cp.key)
		for i := range cp.rules[dir] {
			r := &cp.rules[dir][i]
			if ruleMatches(ix, cp, r, remoteIP, remotePod, portPod, p) {
				out.AllowedBy = append(out.AllowedBy, RuleRef{Policy: cp.key, Direction: dir, Index: i})
			}
		}
	}
	out.Allowed = !out.Isolated || len(out.AllowedBy) > 0
	return out
}

func ruleMatches(ix *index, cp *policy, r *rule, remoteIP netip.Addr, remotePod, portPod *Pod, p Packet) bool {
	peerOK := r.allPeers
	for i := 0; !peerOK && i < len(r.peers); i++ {
		pe := &r.peers[i]
		switch pe.kind {
		case peerIPBlock:
			peerOK = pe.block.contains(remoteIP)
		case peerPods, peerNsPods:
			peerOK = remotePod != nil && ix.peerMatchesPod(pe, cp.namespace, remotePod)
		}
	}
	if !peerOK {
		return false
	}
	if r.allPorts {
		return true
	}
	for _, pt := range r.ports {
		if pt.name == "" {
			if pt.matchesNumber(p.Protocol, p.Port) {
				return true
			}
			continue
		}
		if portPod != nil && pt.protocol == p.Protocol {
			if n, ok := portPod.lookupPort(pt.name, pt.protocol); ok && n == p.Port {
				return true
			}
		}
	}
	return false
}

// Explain prints the verdict in a few lines for people.
func (v Verdict) Explain() string {
	var b strings.Builder
	word := "DENIED"
	if v.Allowed {
		word = "ALLOWED"
	}
	fmt.Fprintf(&b, "%s: %s\n", v.Packet, word)
	explainSide(&b, "egress", "source", v.Egress)
	explainSide(&b, "ingress", "destination", v.Ingress)
	return b.String()
}

func explainSide(b *strings.Builder, dir, side string, d DirectionVerdict) {
	switch {
	case d.Pod == "":
		fmt.Fprintf(b, "  %s: allowed (the %s is not a pod)\n", dir, side)
	case d.FromNode:
		fmt.Fprintf(b, "  %s: allowed (traffic from the node of %s)\n", dir, d.Pod)
	case !d.Isolated:
		fmt.Fprintf(b, "  %s: allowed (no policy isolates %s for %s)\n", dir, d.Pod, dir)
	case d.Allowed:
		refs := make([]string, len(d.AllowedBy))
		for i, r := range d.AllowedBy {
			refs[i] = r.String()
		}
		fmt.Fprintf(b, "  %s: allowed for %s by %s\n", dir, d.Pod, strings.Join(refs, ", "))
	default:
		fmt.Fprintf(b, "  %s: denied: %s is isolated by %s and no rule matches\n", dir, d.Pod, strings.Join(d.IsolatedBy, ", "))
	}
}
