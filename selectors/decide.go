package selectors

import (
	"net/netip"
	"sort"
)

// Decider answers, for one Model, whether the node's table lets a
// connection through: the agent asks it about the conntrack entries of
// the node after a commit, to cut the established flows the new rules
// deny. It reads the Model the way nft/ compiles it (see
// ClusterPolicyRules for the order of the tiers): the source pod's egress
// when the source is a pod of the Model, and the destination pod's
// ingress when the destination is one. Addresses of no pod in the Model
// (open local pods, remote pods, anything else) decide nothing here.
//
// It indexes the Model once, so deciding one connection costs map
// lookups and binary searches, not scans: the agent decides every
// conntrack entry of the node with one Decider.
type Decider struct {
	pods     map[netip.Addr]*PodRules
	policies map[string]*PolicyRules
	cluster  map[string]*ClusterPolicyRules
	addrSets map[string]*AddrSet
	portSets map[string]map[PortEntry]struct{}
}

// NewDecider indexes m. The Decider reads m and must not outlive changes
// to it.
func NewDecider(m *Model) *Decider {
	d := &Decider{
		pods:     make(map[netip.Addr]*PodRules, len(m.Pods)*2),
		policies: make(map[string]*PolicyRules, len(m.Policies)),
		cluster:  make(map[string]*ClusterPolicyRules, len(m.ClusterPolicies)),
		addrSets: make(map[string]*AddrSet, len(m.AddrSets)),
		portSets: make(map[string]map[PortEntry]struct{}, len(m.PortSets)),
	}
	for i := range m.Pods {
		for _, ip := range m.Pods[i].IPs {
			d.pods[ip.Unmap()] = &m.Pods[i]
		}
	}
	for i := range m.Policies {
		d.policies[m.Policies[i].Key] = &m.Policies[i]
	}
	for i := range m.ClusterPolicies {
		d.cluster[m.ClusterPolicies[i].Name] = &m.ClusterPolicies[i]
	}
	for i := range m.AddrSets {
		d.addrSets[m.AddrSets[i].ID] = &m.AddrSets[i]
	}
	for i := range m.PortSets {
		entries := make(map[PortEntry]struct{}, len(m.PortSets[i].Entries))
		for _, e := range m.PortSets[i].Entries {
			e.Addr = e.Addr.Unmap()
			entries[e] = struct{}{}
		}
		d.portSets[m.PortSets[i].ID] = entries
	}
	return d
}

// Involves reports whether addr is an address of a pod of the Model: only
// connections that involve one can be denied.
func (d *Decider) Involves(addr netip.Addr) bool {
	_, ok := d.pods[addr.Unmap()]
	return ok
}

// Pod returns the key of the Model's pod with address addr, or "".
func (d *Decider) Pod(addr netip.Addr) string {
	if p := d.pods[addr.Unmap()]; p != nil {
		return p.Key
	}
	return ""
}

// Allowed reports whether a connection from src to dst with protocol
// proto and destination port port passes the table: both the source
// pod's egress and the destination pod's ingress must allow it. Port is
// ignored for protocols without ports (rules with ports never match them).
func (d *Decider) Allowed(src, dst netip.Addr, proto Protocol, port uint16) bool {
	src, dst = src.Unmap(), dst.Unmap()
	c := connection{src: src, dst: dst, proto: proto, port: port}
	if p := d.pods[src]; p != nil && !d.sideAllows(p, Egress, dst, c) {
		return false
	}
	if p := d.pods[dst]; p != nil && !d.sideAllows(p, Ingress, src, c) {
		return false
	}
	return true
}

// connection is what a rule can match on.
type connection struct {
	src, dst netip.Addr
	proto    Protocol
	port     uint16
}

// sideAllows decides one direction at one pod: the Admin tier (first
// matching rule decides, Pass leaves the tier), the NetworkPolicies when
// one isolates the pod (allow when any rule matches, else deny), the
// Baseline tier, then allow.
func (d *Decider) sideAllows(p *PodRules, dir Direction, remote netip.Addr, c connection) bool {
	if decided, allow := d.tier(p.Cluster[dir].Admin, dir, remote, c); decided {
		return allow
	}
	if keys := p.Isolating(dir); len(keys) > 0 {
		for _, k := range keys {
			pol := d.policies[k]
			if pol == nil {
				continue
			}
			for i := range pol.Rules(dir) {
				r := &pol.Rules(dir)[i]
				if d.matches(r.Peers, r.Ports, remote, c) {
					return true
				}
			}
		}
		return false
	}
	if decided, allow := d.tier(p.Cluster[dir].Baseline, dir, remote, c); decided {
		return allow
	}
	return true
}

// tier runs the ClusterNetworkPolicies of one tier in order; decided is
// false when no rule matched or a Pass rule did.
func (d *Decider) tier(names []string, dir Direction, remote netip.Addr, c connection) (decided, allow bool) {
	for _, name := range names {
		cp := d.cluster[name]
		if cp == nil {
			continue
		}
		rules := cp.Rules(dir)
		for i := range rules {
			r := &rules[i]
			if !d.matches(r.Peers, r.Ports, remote, c) {
				continue
			}
			switch r.Action {
			case ActionAccept:
				return true, true
			case ActionDeny:
				return true, false
			}
			return false, false // Pass: on to the next tier
		}
	}
	return false, false
}

func (d *Decider) matches(peers PeerMatch, ports PortMatch, remote netip.Addr, c connection) bool {
	return d.peerMatches(peers, remote) && d.portMatches(ports, c)
}

func (d *Decider) peerMatches(peers PeerMatch, remote netip.Addr) bool {
	if peers.All {
		return true
	}
	for _, id := range peers.Sets {
		if s := d.addrSets[id]; s != nil && addrSetHolds(s, remote) {
			return true
		}
	}
	return false
}

func (d *Decider) portMatches(ports PortMatch, c connection) bool {
	if ports.All {
		return true
	}
	for _, r := range ports.Ranges {
		if r.Protocol == c.proto && r.First <= c.port && c.port <= r.Last {
			return true
		}
	}
	if ports.Named != "" {
		// Named ports are resolved per destination address, in both
		// directions (see PortSet).
		_, ok := d.portSets[ports.Named][PortEntry{Addr: c.dst, Protocol: c.proto, Port: c.port}]
		return ok
	}
	return false
}

// addrSetHolds searches the sorted addresses and ranges of s.
func addrSetHolds(s *AddrSet, a netip.Addr) bool {
	i := sort.Search(len(s.Addrs), func(i int) bool { return s.Addrs[i].Unmap().Compare(a) >= 0 })
	if i < len(s.Addrs) && s.Addrs[i].Unmap() == a {
		return true
	}
	// The first range whose end is not below a; ranges are ascending and
	// do not overlap, so it is the only one that can hold a.
	j := sort.Search(len(s.Ranges), func(j int) bool { return s.Ranges[j].Last.Compare(a) >= 0 })
	return j < len(s.Ranges) && s.Ranges[j].First.Compare(a) <= 0 && s.Ranges[j].First.BitLen() == a.BitLen()
}
