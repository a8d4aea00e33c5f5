package nft

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/nftpol/nftpol/selectors"
)

// This file is the one-lookup layout of an isolation chain (issue 15).
//
// An isolation chain jumps to the chain of every policy that isolates the
// pod, in key order, and each policy chain looks its rules up one by one:
// a new connection to a pod that 1,000 policies select walked 1,000 jumps
// and several thousand lookups before its accept. In the lookup layout,
// consecutive policies whose rules all fit a map (a segment) are replaced
// in the isolation chain by at most three verdict-map lookups per family:
//
//	shape      key                               kernel set  from
//	addrPort   peer . l4proto . th dport          hash        pod peers × single ports
//	addr       peer                               hash        pod peers, every port
//	ranges     peer                               interval    ipBlocks, every port
//
// Each element's verdict jumps to the chain of the first policy of the
// segment (in key order) that allows the element, so the policy chains
// keep counting per rule, exactly as when they are walked in order. Their
// lookups come in the order above, and each element is resolved against
// the later shapes too: an addrPort element goes to the first policy among
// those allowing it by port, by address or by range; an addr element to
// the first among those allowing it by address or range; a range piece to
// the first allowing it by range. So the policy whose chain the packet
// jumps to is the one the walk would have accepted it in. A policy any of
// whose rules fits no shape (every peer, named ports, port ranges, ipBlocks
// with ports) stays a jump of its own, in place, between segments: order
// is kept, and so is every verdict.
//
// Pod peers are hash maps, whose elements the kernel changes in O(1); an
// interval map is rebuilt on every change (BENCHMARKS.md, round two), and
// holds only ipBlock ranges, which change only with a policy. A pod joining
// a peer set now costs, besides its element in the peer set, one element
// per address × port in every group map whose policies name that set.
// A Compiler shares a segment's maps with its next table while the
// segment's policies' rules and its peer sets' Versions are unchanged
// (compiledSegment); a segment naming a changed set is compiled anew.

// DefaultLookupMinPolicies is the number of policies isolating a pod from
// which its isolation chain takes the lookup layout (see BENCHMARKS.md,
// "One lookup per packet"): below it a walk is cheap and a pod change
// costs one element per address, not one per address × port × group.
const DefaultLookupMinPolicies = 16

// lookupMin is the configured threshold, its default when unset.
func (cfg Config) lookupMin() int {
	if cfg.LookupMinPolicies > 0 {
		return cfg.LookupMinPolicies
	}
	return DefaultLookupMinPolicies
}

type lookupShape uint8

const (
	shapeAddrPort lookupShape = iota
	shapeAddr
	shapeRange
	lookupShapes
)

func (s lookupShape) suffix() string { return [...]string{"pp", "pa", "pr"}[s] }

func (s lookupShape) kind(family int) setKind {
	k := [...][2]setKind{
		{kindPortsVmap4, kindPortsVmap6},
		{kindVmap4, kindVmap6},
		{kindIntervalVmap4, kindIntervalVmap6},
	}[s]
	if family == 6 {
		return k[1]
	}
	return k[0]
}

// lookupCompiler builds the isolation chains of one compile.
type lookupCompiler struct {
	rs       *Ruleset
	model    *selectors.Model
	min      int
	sets     map[string]*selectors.AddrSet // shared with the peerUnions
	policies map[string]*selectors.PolicyRules
	// prev are the segments of the last compile, by id, that this one may
	// share; next those of this compile, kept when next is not nil (only
	// a Compiler keeps a last table).
	prev, next map[string]*compiledSegment
}

// compiledSegment is a segment's lookups and maps with what they were
// compiled from: its policies' rules (a copy: a caller may change the
// model it passed) and the Version of every peer set these name. The
// maps are a function of these alone, so a later compile with the same
// rules and Versions shares them, and Diff skips them by identity: a pod
// change elsewhere no longer rebuilds every map of the table.
type compiledSegment struct {
	dir      selectors.Direction
	keys     []string
	rules    [][]selectors.Rule
	versions map[string]*selectors.SetVersion
	lookups  []ruleSpec
	maps     []*setSpec
}

// newLookupCompiler returns the lookup compiler of one compile; sets are
// the model's peer sets by ID, prev the segments of the last compile of a
// Compiler (nil for none), and keep says to record this compile's
// segments (in next).
func newLookupCompiler(rs *Ruleset, m *selectors.Model, cfg Config, sets map[string]*selectors.AddrSet, prev map[string]*compiledSegment, keep bool) *lookupCompiler {
	g := &lookupCompiler{rs: rs, model: m, min: cfg.lookupMin(), sets: sets, prev: prev}
	if keep {
		g.next = make(map[string]*compiledSegment, len(prev))
	}
	return g
}

// policy returns the rules of the policy of key k, or nil. The index is
// made on first use: most tables have no chain in the lookup layout.
func (g *lookupCompiler) policy(k string) *selectors.PolicyRules {
	if g.policies == nil {
		g.policies = make(map[string]*selectors.PolicyRules, len(g.model.Policies))
		for i := range g.model.Policies {
			g.policies[g.model.Policies[i].Key] = &g.model.Policies[i]
		}
	}
	return g.policies[k]
}

// lookups reports whether an isolation chain of keys takes the lookup
// layout.
func (g *lookupCompiler) lookups(keys []string) bool { return len(keys) >= g.min }

// isolationRules returns the rules of isolation chain iso before its deny
// rules: a jump per policy, or with enough policies, lookup segments.
func (g *lookupCompiler) isolationRules(iso string, keys []string, dir selectors.Direction) []ruleSpec {
	jump := func(k string) ruleSpec {
		return ruleSpec{verdict: verdictJump, target: policyChainName(k, dir)}
	}
	var out []ruleSpec
	if !g.lookups(keys) {
		for _, k := range keys {
			out = append(out, jump(k))
		}
		return out
	}
	var run []*selectors.PolicyRules
	flush := func() {
		if len(run) < min(2, g.min) {
			// A map for one policy saves nothing (tests that set the
			// threshold to 1 want every chain in maps).
			for _, p := range run {
				out = append(out, jump(p.Key))
			}
		} else {
			// Named by the chain and the policies of the segment, so a
			// name always has the same comment: a set whose comment
			// changes can only be replaced with the whole table.
			id := iso
			for _, p := range run {
				id += "\n" + p.Key
			}
			out = append(out, g.segment(id, run, dir)...)
		}
		run = nil
	}
	for _, k := range keys {
		if p := g.policy(k); p != nil && g.fits(p, dir) {
			run = append(run, p)
			continue
		}
		flush()
		out = append(out, jump(k))
	}
	flush()
	return out
}

// countLookups counts the lookup-map rules among rules.
func countLookups(rules []ruleSpec) int {
	n := 0
	for i := range rules {
		if rules[i].vmap != "" {
			n++
		}
	}
	return n
}

// lookupTargets returns, in order, the policy chains the elements of the
// lookup map rule r reaches in rs.
func lookupTargets(rs *Ruleset, r *ruleSpec) []string {
	s := rs.sets[r.vmap]
	if s == nil {
		return nil
	}
	var out []string
	for _, k := range s.sortedKeys() {
		out = append(out, s.elems.get(k))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// fits reports whether every rule of p in dir fits a lookup shape.
func (g *lookupCompiler) fits(p *selectors.PolicyRules, dir selectors.Direction) bool {
	for _, r := range p.Rules(dir) {
		if r.Peers.All || r.Ports.Named != "" {
			return false
		}
		for _, pr := range r.Ports.Ranges {
			if pr.Protocol == 0 || pr.First != pr.Last {
				return false
			}
		}
		for _, id := range r.Peers.Sets {
			s := g.sets[id]
			if s == nil || !r.Ports.All && len(s.Ranges) > 0 {
				return false
			}
		}
	}
	return true
}

// rangePiece is a part of a range map: disjoint from the others, with the
// index of the first policy of the segment whose ranges hold it.
type rangePiece struct {
	first, last netip.Addr
	policy      int
}

// segmentContent is what the policies of one segment allow, per family,
// each element with the first policy (index in the segment) allowing it.
type segmentContent struct {
	has      [lookupShapes]bool
	addrPort [2]map[string]int
	addr     [2]map[string]int
	ranges   [2][]rangePiece
}

func famIdx(family int) int { return family / 6 }

// segment returns the lookups of the policies run (consecutive, all
// fitting), adding their maps to the ruleset. id names the segment.
func (g *lookupCompiler) segment(id string, run []*selectors.PolicyRules, dir selectors.Direction) []ruleSpec {
	if seg := g.prev[id]; seg.sameAs(g, run, dir) {
		for _, spec := range seg.maps {
			g.rs.sets[spec.name] = spec
		}
		g.next[id] = seg
		return slices.Clone(seg.lookups)
	}
	seg := &compiledSegment{dir: dir, versions: map[string]*selectors.SetVersion{}}
	out := g.compileSegment(id, seg, run, dir)
	if g.next != nil && seg.versions != nil {
		for _, p := range run {
			seg.keys = append(seg.keys, p.Key)
			rules := make([]selectors.Rule, 0, len(p.Rules(dir)))
			for _, r := range p.Rules(dir) {
				rules = append(rules, cloneRule(r))
			}
			seg.rules = append(seg.rules, rules)
		}
		seg.lookups = slices.Clone(out)
		g.next[id] = seg
	}
	return out
}

// sameAs reports whether seg (may be nil) was compiled from the rules of
// run for dir and from the same versions of the peer sets they name.
func (seg *compiledSegment) sameAs(g *lookupCompiler, run []*selectors.PolicyRules, dir selectors.Direction) bool {
	if seg == nil || seg.dir != dir || len(seg.keys) != len(run) {
		return false
	}
	for i, p := range run {
		rules := p.Rules(dir)
		if seg.keys[i] != p.Key || len(seg.rules[i]) != len(rules) {
			return false
		}
		for j := range rules {
			if !sameRule(&seg.rules[i][j], &rules[j]) {
				return false
			}
			for _, id := range rules[j].Peers.Sets {
				if v := seg.versions[id]; v == nil || g.sets[id] == nil || g.sets[id].Version != v {
					return false
				}
			}
		}
	}
	return true
}

// compileSegment compiles the lookups and maps of a segment, recording in
// seg the maps and the Versions of the peer sets (seg.versions becomes nil
// when one has none: such a segment cannot be shared).
func (g *lookupCompiler) compileSegment(id string, seg *compiledSegment, run []*selectors.PolicyRules, dir selectors.Direction) []ruleSpec {
	var c segmentContent
	for f := range 2 {
		c.addrPort[f], c.addr[f] = map[string]int{}, map[string]int{}
	}
	for idx, p := range run {
		for _, r := range p.Rules(dir) {
			for _, setID := range r.Peers.Sets {
				s := g.sets[setID]
				if s.Version == nil {
					seg.versions = nil
				} else if seg.versions != nil {
					seg.versions[setID] = s.Version
				}
				if !r.Ports.All {
					c.has[shapeAddrPort] = true
					for _, a := range s.Addrs {
						for _, pr := range r.Ports.Ranges {
							key := portKey(a, pr.Protocol, pr.First)
							if _, ok := c.addrPort[famIdx(familyOf(a))][key]; !ok {
								c.addrPort[famIdx(familyOf(a))][key] = idx
							}
						}
					}
					continue
				}
				if len(s.Ranges) > 0 {
					c.has[shapeRange] = true
					for _, rg := range s.Ranges {
						f := famIdx(familyOf(rg.First))
						c.ranges[f] = coverRange(c.ranges[f], rg, idx)
					}
				}
				if len(s.Ranges) == 0 || len(s.Addrs) > 0 {
					c.has[shapeAddr] = true
				}
				for _, a := range s.Addrs {
					if _, ok := c.addr[famIdx(familyOf(a))][addrKey(a)]; !ok {
						c.addr[famIdx(familyOf(a))][addrKey(a)] = idx
					}
				}
			}
		}
	}
	// Resolve each element against the shapes looked up after it.
	for f := range 2 {
		byRange := func(key string, idx int) int {
			a, _ := netip.AddrFromSlice([]byte(key))
			if w, ok := rangeWinner(c.ranges[f], a); ok && w < idx {
				return w
			}
			return idx
		}
		for key, idx := range c.addr[f] {
			c.addr[f][key] = byRange(key, idx)
		}
		for key, idx := range c.addrPort[f] {
			addr := key[:len(key)-8]
			if w, ok := c.addr[f][addr]; ok && w < idx {
				idx = w
			}
			c.addrPort[f][key] = byRange(addr, idx)
		}
	}

	peerField := fieldSaddr
	if dir == selectors.Egress {
		peerField = fieldDaddr
	}
	var out []ruleSpec
	for shape := range lookupShapes {
		if !c.has[shape] {
			continue
		}
		for _, fam := range []int{4, 6} {
			name := fmt.Sprintf("l-%s-%s-v%d", shortHash(id), shape.suffix(), fam)
			spec := &setSpec{name: name, kind: shape.kind(fam),
				comment: truncateComment(fmt.Sprintf("lookup of %s to %s", dirSuffix(dir), run[len(run)-1].Key))}
			target := func(idx int) string { return policyChainName(run[idx].Key, dir) }
			switch shape {
			case shapeAddrPort:
				for key, idx := range c.addrPort[famIdx(fam)] {
					spec.elems.put(key, target(idx))
				}
			case shapeAddr:
				for key, idx := range c.addr[famIdx(fam)] {
					spec.elems.put(key, target(idx))
				}
			case shapeRange:
				for _, p := range c.ranges[famIdx(fam)] {
					spec.elems.put(rangeKey(p.first, p.last), target(p.policy))
				}
			}
			g.rs.sets[name] = spec
			seg.maps = append(seg.maps, spec)
			out = append(out, ruleSpec{family: fam, vmapOn: peerField, vmap: name, vmapPorts: shape == shapeAddrPort})
		}
	}
	return out
}

// coverRange adds to pieces (sorted, disjoint) the parts of r that no
// piece holds yet, for policy idx; adjacent parts of one policy join.
func coverRange(pieces []rangePiece, r selectors.AddrRange, idx int) []rangePiece {
	cur, done := r.First, false
	var add []rangePiece
	start := sort.Search(len(pieces), func(i int) bool { return pieces[i].last.Compare(r.First) >= 0 })
	for _, p := range pieces[start:] {
		if p.first.Compare(r.Last) > 0 {
			break
		}
		if p.first.Compare(cur) > 0 {
			add = append(add, rangePiece{cur, p.first.Prev(), idx})
		}
		if p.last.Compare(r.Last) >= 0 {
			done = true
			break
		}
		cur = p.last.Next()
	}
	if !done {
		add = append(add, rangePiece{cur, r.Last, idx})
	}
	out := append(pieces, add...)
	slices.SortFunc(out, func(a, b rangePiece) int { return a.first.Compare(b.first) })
	joined := out[:0]
	for _, p := range out {
		if n := len(joined); n > 0 && joined[n-1].policy == p.policy && joined[n-1].last.Next() == p.first {
			joined[n-1].last = p.last
			continue
		}
		joined = append(joined, p)
	}
	return joined
}

// rangeWinner returns the policy of the piece holding a.
func rangeWinner(pieces []rangePiece, a netip.Addr) (int, bool) {
	i := sort.Search(len(pieces), func(i int) bool { return pieces[i].last.Compare(a) >= 0 })
	if i < len(pieces) && pieces[i].first.Compare(a) <= 0 {
		return pieces[i].policy, true
	}
	return 0, false
}
