package selectors

import (
	"net/netip"
	"slices"
)

// PodAddrGuard is what the node's guard of pod addresses needs: traffic
// to or from an address of PodCIDRs that is not in Known is dropped
// (nft/podguard.go). Known grows in the very transaction that installs
// a new pod's rules, so a pod is never reachable before its policies are
// in force, with or without the CNI plugin.
type PodAddrGuard struct {
	// PodCIDRs are this node's pod address ranges; none: no guard.
	PodCIDRs []netip.Prefix
	// Known are the addresses of this node's endpoint pods, ascending.
	Known []netip.Addr
}

// LocalAddrs returns the addresses of the node's endpoint pods as of the
// last build (each owned address once), ascending.
func (bl *Builder) LocalAddrs() []netip.Addr {
	var addrs []netip.Addr
	for _, pods := range bl.local {
		for _, p := range pods {
			addrs = append(addrs, p.IPs...)
		}
	}
	slices.SortFunc(addrs, netip.Addr.Compare)
	return slices.Compact(addrs)
}

// Ranges returns the pod CIDRs as address ranges, ascending, nested or
// overlapping ones merged (an interval set refuses overlaps).
func (g PodAddrGuard) Ranges() []AddrRange {
	rs := make([]AddrRange, 0, len(g.PodCIDRs))
	for _, p := range g.PodCIDRs {
		rs = append(rs, prefixRange(p))
	}
	slices.SortFunc(rs, func(a, b AddrRange) int { return a.First.Compare(b.First) })
	var out []AddrRange
	for _, r := range rs {
		if n := len(out); n > 0 && out[n-1].Last.Is4() == r.First.Is4() && r.First.Compare(out[n-1].Last) <= 0 {
			if r.Last.Compare(out[n-1].Last) > 0 {
				out[n-1].Last = r.Last
			}
			continue
		}
		out = append(out, r)
	}
	return out
}
