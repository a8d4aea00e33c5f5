package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/nftpol/nftpol/selectors"
)

// This file merges the ipBlock peers of one rule into one interval set.
//
// Every peer of a rule has its own address set (the model shares a set
// among the rules that name the same peer), and a rule matches one set per
// lookup, so a rule with n peers became n rules per port part and family:
// a rule of 1,000 ipBlocks × 5 ports was 10,000 rules, walked one by one by
// every new connection. The peers of a rule are a union, so the ipBlocks of
// a rule go into one interval set of their merged ranges, looked up once
// per (port part, family) whatever their number.
//
// Only ipBlock sets (ranges, no pod addresses) are merged: their content
// is a function of their IDs (the CIDRs and excepts), so a union never
// changes on a pod change, and a pod joining a selector still changes one
// element of one set. Pod selector peers keep their shared sets.
//
// The ports of a rule are a union too: its single ports, when it has two
// or more, go into one set of (protocol . port), so a rule is one rule per
// peer family whatever its number of ports (serviceSet).

// peerUnions resolves the peer sets of the rules of one compile, adding
// the union sets it makes to the ruleset.
type peerUnions struct {
	rs   *Ruleset
	sets map[string]*selectors.AddrSet // the model's, by ID
	// merged are the IDs of the sets that went into a union.
	merged map[string]bool
	// recorded, when not nil, gets the IDs of every union setNames makes
	// or looks up (see compiledChain).
	recorded *[][]string
}

func newPeerUnions(rs *Ruleset, sets map[string]*selectors.AddrSet) *peerUnions {
	return &peerUnions{rs: rs, sets: sets, merged: map[string]bool{}}
}

// addrSetsByID indexes the peer sets of m by ID, once per compile for
// the unions and the lookup layout.
func addrSetsByID(m *selectors.Model) map[string]*selectors.AddrSet {
	sets := make(map[string]*selectors.AddrSet, len(m.AddrSets))
	for i := range m.AddrSets {
		sets[m.AddrSets[i].ID] = &m.AddrSets[i]
	}
	return sets
}

// mergeable reports whether a set is made of ranges only (an ipBlock or
// a CNP network list), whose members no pod change can move.
func (u *peerUnions) mergeable(id string) bool {
	s := u.sets[id]
	return s != nil && len(s.Ranges) > 0 && len(s.Addrs) == 0
}

// setNames returns the set bases a rule's peers are looked up in: the IDs of
// its own sets, each named by addrSetName, and at most one union, named by
// unionSetName. A union is made only of two or more mergeable sets.
func (u *peerUnions) setNames(ids []string) (names [][2]string) {
	var merge []string
	for _, id := range ids {
		if u != nil && u.mergeable(id) {
			merge = append(merge, id)
			continue
		}
		names = append(names, [2]string{addrSetName(id, 4), addrSetName(id, 6)})
	}
	switch len(merge) {
	case 0:
	case 1:
		names = append(names, [2]string{addrSetName(merge[0], 4), addrSetName(merge[0], 6)})
	default:
		names = append(names, u.union(merge))
		for _, id := range merge {
			u.merged[id] = true
		}
		if u.recorded != nil {
			*u.recorded = append(*u.recorded, merge)
		}
	}
	return names
}

// dropMerged removes from the ruleset the sets that went into a union and
// that no rule looks up on their own: a rule of 1,000 ipBlocks would
// otherwise leave 2,000 sets in the table that nothing reads. Call it once
// every chain is compiled.
func (u *peerUnions) dropMerged() {
	if len(u.merged) == 0 {
		return
	}
	used := map[string]bool{}
	for _, c := range u.rs.chains {
		for i := range c.rules {
			used[c.rules[i].set] = true
		}
	}
	for id := range u.merged {
		for _, fam := range []int{4, 6} {
			if name := addrSetName(id, fam); !used[name] {
				delete(u.rs.sets, name)
			}
		}
	}
}

// union returns the names of the IPv4 and IPv6 union sets of ids (sorted),
// adding them to the ruleset on first use.
func (u *peerUnions) union(ids []string) [2]string {
	names := [2]string{unionSetName(ids, 4), unionSetName(ids, 6)}
	if u.rs.sets[names[0]] != nil {
		return names
	}
	var ranges []selectors.AddrRange
	for _, id := range ids {
		ranges = append(ranges, u.sets[id].Ranges...)
	}
	ranges = mergeRanges(ranges)
	comment := truncateComment("union of " + strings.Join(ids, " "))
	for i, fam := range []int{4, 6} {
		kind := kindInterval4
		if fam == 6 {
			kind = kindInterval6
		}
		spec := &setSpec{name: names[i], kind: kind, comment: comment}
		for _, r := range ranges {
			if familyOf(r.First) == fam {
				spec.elems.put(rangeKey(r.First, r.Last), "")
			}
		}
		u.rs.sets[names[i]] = spec
	}
	return names
}

// mergeRanges sorts ranges and joins those that overlap or touch, so the
// interval set gets disjoint elements (the kernel refuses overlaps).
// IPv4 and IPv6 ranges never join: an IPv4 address sorts before every
// IPv6 address and Next of the last IPv4 address is invalid.
func mergeRanges(rs []selectors.AddrRange) []selectors.AddrRange {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b selectors.AddrRange) int {
		if c := a.First.Compare(b.First); c != 0 {
			return c
		}
		return a.Last.Compare(b.Last)
	})
	var out []selectors.AddrRange
	for _, r := range rs {
		if n := len(out); n > 0 && touches(out[n-1], r) {
			if r.Last.Compare(out[n-1].Last) > 0 {
				out[n-1].Last = r.Last
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// touches reports whether b, which does not start before a, overlaps a or
// starts right after it, in the same family.
func touches(a, b selectors.AddrRange) bool {
	if a.First.Is4() != b.First.Is4() {
		return false
	}
	if b.First.Compare(a.Last) <= 0 {
		return true
	}
	next := a.Last.Next()
	return next != (netip.Addr{}) && next == b.First
}

func unionSetName(ids []string, family int) string {
	return fmt.Sprintf("u-%s-v%d", shortHash(strings.Join(ids, "\n")), family)
}

// singlePort reports whether a port range is one port (a range of every
// port of a protocol is a protocol match, no port).
func singlePort(pr selectors.PortRange) bool {
	return pr.First == pr.Last && pr.First != 0
}

// serviceSet returns the name of the set of the single ports among ranges
// when there are two or more, adding it to the ruleset on first use, else
// "" (one port is one comparison, cheaper than a lookup). Its name is a
// hash of its elements, so the rules with the same ports share it. A nil
// u makes no set: each port is a rule of its own.
func (u *peerUnions) serviceSet(ranges []selectors.PortRange) string {
	if u == nil {
		return ""
	}
	var keys []string
	for _, pr := range ranges {
		if singlePort(pr) {
			keys = append(keys, serviceKey(pr.Protocol, pr.First))
		}
	}
	slices.Sort(keys)
	keys = slices.Compact(keys)
	if len(keys) < 2 {
		return ""
	}
	name := "s-" + shortHash(strings.Join(keys, ""))
	if u.rs.sets[name] == nil {
		spec := &setSpec{name: name, kind: kindServices}
		var text []string
		for _, k := range keys {
			spec.elems.put(k, "")
			text = append(text, elementText(kindServices, k, ""))
		}
		spec.comment = truncateComment("ports (protocol . port) " + strings.Join(text, ", "))
		u.rs.sets[name] = spec
	}
	return name
}
