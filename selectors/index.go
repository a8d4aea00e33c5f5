package selectors

import (
	"encoding/binary"
	"math/bits"
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/labels"
)

// index holds the cluster state in the shapes lookups need: endpoint pods by
// namespace and by address, namespace labels by name. Every pod in the
// index holds only the addresses it owns (see AddressOwners).
type index struct {
	podsByNamespace map[string][]*Pod
	namespaceLabels map[string]labels.Set
	// namespaceNames is every namespace known from objects or pods.
	namespaceNames []string
	// contested are the owners of the addresses several endpoint pods
	// claim; usually empty.
	contested map[netip.Addr]*Pod
	// byIP is built on first use (ipBlock egress peers with named ports):
	// most syncs never need it, and at 100k pods it is the largest map of
	// the index.
	byIP map[netip.Addr]*Pod
}

func newIndex(s *State) *index {
	ix := &index{
		podsByNamespace: map[string][]*Pod{},
		namespaceLabels: make(map[string]labels.Set, len(s.Namespaces)),
		contested:       contestedOwners(s.Pods),
	}
	for _, ns := range s.Namespaces {
		if ns == nil {
			continue
		}
		ix.addNamespace(ns.Name, ns.Labels)
	}
	for _, p := range s.Pods {
		if p == nil || !p.IsEndpoint() {
			continue
		}
		if p = ix.ownedPart(p); p == nil {
			continue
		}
		if _, ok := ix.namespaceLabels[p.Namespace]; !ok {
			ix.addNamespace(p.Namespace, nil)
		}
		ix.podsByNamespace[p.Namespace] = append(ix.podsByNamespace[p.Namespace], p)
	}
	return ix
}

// ownedPart returns p as the model sees it: p itself when it owns all its
// addresses, nil when it owns none, else a copy with the addresses it owns.
// A pod's labels and named ports thus never reach a set for an address
// another pod owns. Copies cost the Builder its reuse of the namespace
// while the conflict lasts, which is rare and short.
func (ix *index) ownedPart(p *Pod) *Pod {
	if len(ix.contested) == 0 {
		return p
	}
	return withOwnedIPs(p, func(ip netip.Addr) bool {
		o, ok := ix.contested[ip]
		return !ok || o == p
	})
}

// withOwnedIPs returns p itself when owns holds for all its addresses,
// nil when for none, else a copy of p with the addresses it owns.
func withOwnedIPs(p *Pod, owns func(netip.Addr) bool) *Pod {
	n := 0
	for _, ip := range p.IPs {
		if owns(ip) {
			n++
		}
	}
	switch n {
	case len(p.IPs):
		return p
	case 0:
		return nil
	}
	part := *p
	part.IPs = make([]netip.Addr, 0, n)
	for _, ip := range p.IPs {
		if owns(ip) {
			part.IPs = append(part.IPs, ip)
		}
	}
	return &part
}

// podByIP returns the endpoint pod that owns each address, from the
// index's pods, which hold only the addresses they own.
func (ix *index) podByIP() map[netip.Addr]*Pod {
	if ix.byIP == nil {
		ix.byIP = map[netip.Addr]*Pod{}
		for _, pods := range ix.podsByNamespace {
			for _, p := range pods {
				for _, ip := range p.IPs {
					ix.byIP[ip] = p
				}
			}
		}
	}
	return ix.byIP
}

// contestedOwners returns the owner of every address that more than one
// endpoint pod claims. It runs on every sync over every pod, so it avoids
// the obvious map of every address (about 10 MB and most of a sync's time
// at 100k dual-stack pods): it partitions the claims by a hash of the
// address into buckets with a counting sort, and within a bucket compares
// hashes first, so the pods themselves (scattered in memory) are only read
// for true duplicates.
func contestedOwners(pods []*Pod) map[netip.Addr]*Pod {
	claiming := func(p *Pod) bool { return p != nil && p.IsEndpoint() }
	n := 0
	for _, p := range pods {
		if claiming(p) {
			n += len(p.IPs)
		}
	}
	if n < 2 {
		return nil
	}
	hash := func(a netip.Addr) uint64 {
		b := a.As16()
		h := binary.LittleEndian.Uint64(b[:8])*0x9e3779b97f4a7c15 ^ binary.LittleEndian.Uint64(b[8:])
		return h * 0xbf58476d1ce4e5b9
	}
	// About one address per bucket, at most 64k buckets, chosen by the
	// hash's top bits.
	shift := 64 - min(bits.Len(uint(n)), 16)
	starts := make([]int32, 1<<(64-shift)+1)
	for _, p := range pods {
		if claiming(p) {
			for _, ip := range p.IPs {
				starts[hash(ip)>>shift+1]++
			}
		}
	}
	for i := 1; i < len(starts); i++ {
		starts[i] += starts[i-1]
	}
	type claim struct {
		hash     uint64
		pod, adr int32
	}
	claims := make([]claim, n)
	next := slices.Clone(starts[:len(starts)-1])
	for pi, p := range pods {
		if !claiming(p) {
			continue
		}
		for ai, ip := range p.IPs {
			h := hash(ip)
			claims[next[h>>shift]] = claim{hash: h, pod: int32(pi), adr: int32(ai)}
			next[h>>shift]++
		}
	}
	var out map[netip.Addr]*Pod
	for b := 0; b+1 < len(starts); b++ {
		bucket := claims[starts[b]:starts[b+1]]
		for i := 1; i < len(bucket); i++ {
			for _, c := range bucket[:i] {
				if c.hash != bucket[i].hash {
					continue
				}
				pi, pj := pods[bucket[i].pod], pods[c.pod]
				addr := pi.IPs[bucket[i].adr]
				if addr != pj.IPs[c.adr] {
					continue // the same hash, another address
				}
				if out == nil {
					out = map[netip.Addr]*Pod{}
				}
				if o, ok := out[addr]; ok {
					pj = o
				}
				out[addr] = pj
				if pi.claimsBefore(pj) {
					out[addr] = pi
				}
				break
			}
		}
	}
	return out
}

// addNamespace records a namespace's labels, with the name label the API
// server always sets, so selectors on it work even for a namespace whose
// object has not been seen.
func (ix *index) addNamespace(name string, l map[string]string) {
	set := namespaceLabelSet(name, l)
	if _, seen := ix.namespaceLabels[name]; !seen {
		ix.namespaceNames = append(ix.namespaceNames, name)
	}
	ix.namespaceLabels[name] = set
}

// namespaceLabelSet returns a namespace's labels as selectors see them:
// with the name label the API server always sets.
func namespaceLabelSet(name string, l map[string]string) labels.Set {
	set := make(labels.Set, len(l)+1)
	for k, v := range l {
		set[k] = v
	}
	if _, ok := set[metadataNameLabel]; !ok {
		set[metadataNameLabel] = name
	}
	return set
}

// selectsPod reports whether a policy's podSelector selects pod.
func (p *policy) selectsPod(pod *Pod) bool {
	return p.podSel != nil && pod.Namespace == p.namespace && p.podSel.Matches(labels.Set(pod.Labels))
}

// peerPods calls fn for every endpoint pod a selector peer matches, and
// covers for every namespace it takes pods from, whether it has any.
func (ix *index) peerPods(pe *peer, policyNamespace string, covers func(ns string), fn func(*Pod)) {
	ix.peerNamespaces(pe, policyNamespace, func(ns string) {
		covers(ns)
		for _, pod := range ix.podsByNamespace[ns] {
			if pe.podSel == nil || pe.podSel.Matches(labels.Set(pod.Labels)) {
				fn(pod)
			}
		}
	})
}

// peerNamespaces calls fn for every namespace a selector peer takes pods
// from.
func (ix *index) peerNamespaces(pe *peer, policyNamespace string, fn func(ns string)) {
	switch pe.kind {
	case peerPods:
		fn(policyNamespace)
	case peerNsPods:
		for _, ns := range ix.namespaceNames {
			if pe.nsSel.Matches(ix.namespaceLabels[ns]) {
				fn(ns)
			}
		}
	}
}

// podsOf returns the endpoint pods of ns that a selector peer's pod
// selector matches, nil for none. A peer with no pod selector gets the
// index's own slice, shared and never changed (a change of the namespace
// brings a new slice), so keeping it costs nothing.
func (ix *index) podsOf(pe *peer, ns string) []*Pod {
	all := ix.podsByNamespace[ns]
	if pe.podSel == nil {
		return all
	}
	var out []*Pod
	for _, pod := range all {
		if pe.podSel.Matches(labels.Set(pod.Labels)) {
			out = append(out, pod)
		}
	}
	if len(out) == 0 {
		return nil
	}
	if cap(out) > len(out) {
		out = slices.Clone(out) // kept with the set: no room to spare
	}
	return out
}

// podAddrs returns the addresses of the pods of every list, ascending, in
// a slice of exactly their number (a set lives as long as the model).
func podAddrs(lists ...[]*Pod) []netip.Addr {
	n := 0
	for _, pods := range lists {
		for _, p := range pods {
			n += len(p.IPs)
		}
	}
	if n == 0 {
		return nil
	}
	out := make([]netip.Addr, 0, n)
	for _, pods := range lists {
		for _, p := range pods {
			out = append(out, p.IPs...)
		}
	}
	return sortAddrs(out)
}
