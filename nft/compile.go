package nft

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nftpol/nftpol/selectors"
)

// Compiler turns models into rulesets. It is pure: the ruleset depends on
// the model and the configuration only. It keeps the last ruleset it made
// so that the next one can share the sets whose content did not change: a
// sync after one pod change compiles the few sets that changed, not every
// element of the table, and Diff skips the shared sets by identity.
// A Compiler is not safe for concurrent use.
type Compiler struct {
	cfg  Config
	prev *Ruleset
	// addrSets and portSets are the sets of the model prev was compiled
	// from, by ID (a caller may change the model it passed, so a set
	// without a Version is a copy).
	addrSets kept[string, selectors.AddrSet]
	portSets kept[string, selectors.PortSet]
	// chains are the policy chains of prev, by name, with the rules they
	// were compiled from (see compiledChain); isoChains its isolation
	// chains, which are a function of their policies' keys.
	chains    map[string]*compiledChain
	isoChains map[string]*chainSpec
	segments  map[string]*compiledSegment // lookup segments of prev (lookup.go)
	// verdicts are the elements the verdict maps of prev were filled
	// from, by map name (nextVerdicts: during a compile).
	verdicts, nextVerdicts map[string][]verdictElem
	names                  names
}

// isolationChain returns the isolation chain name of the last table when
// it jumps to the policies keys, else nil (also for a nil c).
func (c *Compiler) isolationChain(name string, keys []string, dir selectors.Direction) *chainSpec {
	if c == nil {
		return nil
	}
	if prev := c.isoChains[name]; prev != nil && prev.dir == dir && slices.Equal(prev.policies, keys) {
		return prev
	}
	return nil
}

// names keeps the derived names of one Compiler's objects (table.go): a
// hash of what names the object, the same from compile to compile, and
// hashing every name again was a good part of a compile after one pod
// change. A compile keeps the names it used for the next and drops the
// others (a generation stamp per name: the map is not made again each
// compile). A nil *names derives every name.
type names struct {
	kept kept[nameKey, string]
}

// kept is a map a Compiler keeps from one compile to the next: a compile
// (begin to end) marks the entries it uses, and end drops those it did
// not. Making such maps again each compile (a few entries per peer set
// and chain of the table: ~10⁴ at 100k pods) was a good part of a compile
// after one pod change; updating entries in place costs a lookup each, and
// the sweep runs only when some entry went unused.
type kept[K comparable, V any] struct {
	m    map[K]*keptEntry[V]
	gen  uint64
	used int
}

type keptEntry[V any] struct {
	value V
	gen   uint64
}

func (k *kept[K, V]) begin() { k.gen, k.used = k.gen+1, 0 }

// last returns the entry of key as the last compile left it, or nil; it
// does not mark it used.
func (k *kept[K, V]) last(key K) *keptEntry[V] {
	if e := k.m[key]; e != nil && e.gen != k.gen {
		return e
	}
	return nil
}

// use returns the entry of key, marked used, with a zero value when new.
func (k *kept[K, V]) use(key K) *keptEntry[V] {
	e := k.m[key]
	if e == nil {
		if k.m == nil {
			k.m = map[K]*keptEntry[V]{}
		}
		e = &keptEntry[V]{}
		k.m[key] = e
	}
	if e.gen != k.gen {
		e.gen = k.gen
		k.used++
	}
	return e
}

func (k *kept[K, V]) end() {
	if len(k.m) == k.used {
		return
	}
	for key, e := range k.m {
		if e.gen != k.gen {
			delete(k.m, key)
		}
	}
}

type nameKey struct {
	kind byte // 'p' policy chain, 'i' isolation chain, 'a' address set, 'n' named-port set
	s    string
	n    int // direction or family
}

func (n *names) name(k nameKey, derive func() string) string {
	if n == nil {
		return derive()
	}
	e := n.kept.use(k)
	if e.value == "" {
		e.value = derive()
	}
	return e.value
}

func (n *names) policyChain(key string, dir selectors.Direction) string {
	return n.name(nameKey{'p', key, int(dir)}, func() string { return policyChainName(key, dir) })
}

func (n *names) isolationChain(keys []string, dir selectors.Direction) string {
	if len(keys) == 1 {
		return n.name(nameKey{'i', keys[0], int(dir)}, func() string { return isolationChainName(keys, dir) })
	}
	return n.name(nameKey{'i', strings.Join(keys, "\n"), int(dir)}, func() string { return isolationChainName(keys, dir) })
}

func (n *names) addrSet(id string, family int) string {
	return n.name(nameKey{'a', id, family}, func() string { return addrSetName(id, family) })
}

func (n *names) portSet(id string, family int) string {
	return n.name(nameKey{'n', id, family}, func() string { return portSetName(id, family) })
}

// NewCompiler returns a compiler for cfg (defaults filled in).
func NewCompiler(cfg Config) (*Compiler, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	return &Compiler{cfg: cfg}, nil
}

// Compile returns the table that enforces m, sharing unchanged sets with
// the previous call's table. Compiled specs are never modified, so sharing
// them is safe.
func (c *Compiler) Compile(m *selectors.Model) *Ruleset {
	c.prev = compile(m, c.cfg, c)
	return c.prev
}

// newSerial returns a serial no other spec has (see setSpec.serial).
func newSerial() *setSerial { return &setSerial{} }

// Compile returns the table that enforces m, from scratch. Unset fields of
// cfg take their defaults; an invalid deny action compiles as drop.
func Compile(m *selectors.Model, cfg Config) *Ruleset {
	return compile(m, cfg.filled(), nil)
}

// filled is WithDefaults without validation, for callers that cannot fail.
func (cfg Config) filled() Config {
	if full, err := cfg.WithDefaults(); err == nil {
		return full
	}
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if cfg.LogRate == 0 {
		cfg.LogRate = DefaultLogRate
	}
	return cfg
}

// compile makes the table of m; comp, when not nil, is the Compiler whose
// last table it may share sets and chains with, and whose derived names
// it reuses.
func compile(m *selectors.Model, cfg Config, comp *Compiler) *Ruleset {
	rs := newRuleset(cfg.Table)
	if comp != nil && comp.prev != nil {
		// The next table is about as large as the last: no rehashing
		// while it fills.
		rs.sets = make(map[string]*setSpec, len(comp.prev.sets))
		rs.chains = make(map[string]*chainSpec, len(comp.prev.chains))
	}
	for _, dir := range selectors.Directions {
		for _, family := range []int{4, 6} {
			addVerdictMap(rs, verdictMap(dir, family), fmt.Sprintf("local pods isolated for %s (IPv%d)", dir, family), family)
		}
	}
	for _, bc := range baseChains {
		guard := func(family int) []ruleSpec { return podGuardRules(m.Guard, bc, family) }
		rs.chains[bc.name] = baseChainSpec(bc.name, bc, bc.prio, verdictMap, guard)
	}
	addPodGuardSets(rs, m.Guard)

	var names *names
	if comp != nil {
		names = &comp.names
		names.kept.begin()
		defer names.kept.end()
	}
	compileSets(rs, m, comp, names)

	used := map[string]bool{} // policy chains that some pod jumps to
	setsByID := addrSetsByID(m)
	unions := newPeerUnions(rs, setsByID)
	cc := newClusterCompiler(rs, m, cfg, unions)
	var segments map[string]*compiledSegment
	if comp != nil {
		segments = comp.segments
	}
	lc := newLookupCompiler(rs, m, cfg, setsByID, segments, comp != nil)
	verdicts := map[string][]verdictElem{}
	if comp != nil {
		comp.nextVerdicts = make(map[string][]verdictElem, len(comp.verdicts))
		defer func() { comp.verdicts, comp.nextVerdicts = comp.nextVerdicts, nil }()
	}
	for _, pod := range m.Pods {
		for _, dir := range selectors.Directions {
			var iso string
			if keys := pod.Isolating(dir); len(keys) > 0 {
				iso = names.isolationChain(keys, dir)
				if _, ok := rs.chains[iso]; !ok {
					c := comp.isolationChain(iso, keys, dir)
					switch {
					case lc.lookups(keys):
						// The lookup layout (lookup.go): its maps follow
						// the peer sets, so it is never taken from the
						// last table; its rules are, when they are equal.
						rules := append(lc.isolationRules(iso, keys, dir), denyRules(cfg, dir)...)
						if c == nil || !slices.Equal(c.rules, rules) {
							c = &chainSpec{name: iso, dir: dir, rules: rules, policies: keys, isolates: true, lookups: countLookups(rules)}
						}
					case c == nil:
						c = isolationChain(iso, keys, dir, names.policyChain, denyRules(cfg, dir))
						c.policies, c.isolates = keys, true
					}
					for _, k := range keys {
						used[names.policyChain(k, dir)] = true
					}
					rs.chains[iso] = c
				}
			}
			target := cc.podChain(pod.Cluster[dir], iso, dir)
			if target == "" {
				continue
			}
			for _, ip := range pod.IPs {
				name := verdictMap(dir, familyOf(ip))
				verdicts[name] = append(verdicts[name], verdictElem{addrKey(ip), target})
			}
		}
	}
	for name, elems := range verdicts {
		fillVerdictMap(rs, comp, name, elems)
	}
	var chains map[string]*compiledChain
	if comp != nil {
		chains = make(map[string]*compiledChain, len(comp.chains))
	}
	for i := range m.Policies {
		p := &m.Policies[i]
		for _, dir := range selectors.Directions {
			name := names.policyChain(p.Key, dir)
			if !used[name] {
				continue
			}
			if comp != nil {
				pc := comp.chains[name].reuse(unions, p, dir)
				if pc == nil {
					pc = compilePolicyChain(unions, name, p, dir)
				}
				chains[name] = pc
				rs.chains[name] = pc.chain
				continue
			}
			rs.chains[name] = &chainSpec{name: name, policies: []string{p.Key}, dir: dir, rules: policyRules(unions, p, dir)}
		}
	}
	if comp != nil {
		comp.chains, comp.segments = chains, lc.next
		comp.isoChains = make(map[string]*chainSpec)
		for name, c := range rs.chains {
			if c.isolates {
				comp.isoChains[name] = c
			}
		}
	}
	compileAudit(rs, m, cfg, unions)
	// A pod may name a policy the model has no rules for (not from
	// BuildModel, but a jump to nowhere would fail the whole commit): such
	// a policy allows nothing.
	for name := range used {
		if rs.chains[name] == nil {
			key, dir := policyOfChain(m, name)
			rs.chains[name] = &chainSpec{name: name, policies: []string{key}, dir: dir}
		}
	}
	unions.dropMerged()
	return rs
}

// compiledChain is a policy chain with what it was compiled from: the
// policy's key and rules (a copy: a caller may change the model it
// passed) and, for each peer set its rules name, whether unions merged
// it. The chain's rules are a function of these alone, so a later model
// with equal ones shares the chain, and Diff skips it by identity: a pod
// change no longer compiles every rule of the table again.
type compiledChain struct {
	chain     *chainSpec
	key       string
	rules     []selectors.Rule
	mergeable []bool
	// unions are the peer sets each union the chain looks up was made of,
	// made again in a table that shares the chain.
	unions [][]string
}

// compilePolicyChain compiles the chain of policy p for dir.
func compilePolicyChain(u *peerUnions, name string, p *selectors.PolicyRules, dir selectors.Direction) *compiledChain {
	cc := &compiledChain{chain: &chainSpec{name: name, policies: []string{p.Key}, dir: dir}, key: p.Key}
	u.recorded = &cc.unions
	cc.chain.rules = policyRules(u, p, dir)
	u.recorded = nil
	for _, r := range p.Rules(dir) {
		cc.rules = append(cc.rules, cloneRule(r))
		for _, id := range r.Peers.Sets {
			cc.mergeable = append(cc.mergeable, u.mergeable(id))
		}
	}
	return cc
}

// reuse returns cc when p's rules for dir compile to its chain in u's
// table (adding the unions it looks up there), else nil.
func (cc *compiledChain) reuse(u *peerUnions, p *selectors.PolicyRules, dir selectors.Direction) *compiledChain {
	rules := p.Rules(dir)
	if cc == nil || cc.key != p.Key || len(cc.rules) != len(rules) {
		return nil
	}
	n := 0
	for i := range rules {
		if !sameRule(&cc.rules[i], &rules[i]) {
			return nil
		}
		for _, id := range rules[i].Peers.Sets {
			if u.mergeable(id) != cc.mergeable[n] {
				return nil
			}
			n++
		}
	}
	for _, ids := range cc.unions {
		u.union(ids)
		for _, id := range ids {
			u.merged[id] = true
		}
	}
	// The sets of the rules' single ports, as ruleMatches adds them.
	for i := range rules {
		if len(rules[i].Peers.Sets) > 0 || rules[i].Peers.All {
			u.serviceSet(rules[i].Ports.Ranges)
		}
	}
	return cc
}

func sameRule(a, b *selectors.Rule) bool {
	return a.Peers.All == b.Peers.All && slices.Equal(a.Peers.Sets, b.Peers.Sets) &&
		a.Ports.All == b.Ports.All && a.Ports.Named == b.Ports.Named && slices.Equal(a.Ports.Ranges, b.Ports.Ranges)
}

func cloneRule(r selectors.Rule) selectors.Rule {
	r.Peers.Sets = slices.Clone(r.Peers.Sets)
	r.Ports.Ranges = slices.Clone(r.Ports.Ranges)
	return r
}

// policyOfChain finds the policy key and direction a pod's isolation names
// for a policy chain.
func policyOfChain(m *selectors.Model, chain string) (string, selectors.Direction) {
	for _, pod := range m.Pods {
		for _, dir := range selectors.Directions {
			for _, k := range pod.Isolating(dir) {
				if policyChainName(k, dir) == chain {
					return k, dir
				}
			}
		}
	}
	return "", selectors.Ingress
}

// verdictElem is one element of a verdict map of local pods.
type verdictElem struct{ key, target string }

// fillVerdictMap puts elems into the verdict map name of rs, or when the
// last compile of comp (may be nil) filled that map from the same
// elements, shares the last table's map: most changes move no local pod,
// and Diff skips a shared map by identity.
func fillVerdictMap(rs *Ruleset, comp *Compiler, name string, elems []verdictElem) {
	spec := rs.sets[name]
	if comp != nil {
		last := comp.verdicts[name]
		comp.nextVerdicts[name] = elems
		if comp.prev != nil && comp.prev.sets[name] != nil && slices.Equal(last, elems) {
			rs.sets[name] = comp.prev.sets[name]
			return
		}
	}
	for _, e := range elems {
		spec.elems.put(e.key, e.target)
	}
}

// addVerdictMap adds an empty verdict map of local pod addresses.
func addVerdictMap(rs *Ruleset, name, comment string, family int) {
	rs.sets[name] = &setSpec{name: name, kind: vmapKind(family), comment: comment}
}

// baseChainSpec is the base chain of bc's hook and direction, named name
// at priority prio, that sends a pod's new connections where the verdict
// maps vmap names send them: established traffic and (where bc says so)
// neighbour discovery are accepted first, then per family the rules
// before gives (nil: none) ahead of its map.
func baseChainSpec(name string, bc baseChain, prio int32, vmap func(selectors.Direction, int) string, before func(family int) []ruleSpec) *chainSpec {
	c := &chainSpec{name: name, hook: bc.hook, prio: prio, typ: chainTypeFilter, policy: chainPolicyAccept,
		rules: []ruleSpec{{ctEstablished: true, verdict: verdictAccept}}}
	if bc.nd {
		for _, t := range []uint8{ndNeighborSolicit, ndNeighborAdvert} {
			c.rules = append(c.rules, ruleSpec{family: 6, icmpv6Type: t, verdict: verdictAccept})
		}
	}
	on := fieldDaddr
	if bc.dir == selectors.Egress {
		on = fieldSaddr
	}
	for _, family := range []int{4, 6} {
		if before != nil {
			c.rules = append(c.rules, before(family)...)
		}
		c.rules = append(c.rules, ruleSpec{family: family, vmapOn: on, vmap: vmap(bc.dir, family)})
	}
	return c
}

// isolationChain is the NetworkPolicy tier of a pod isolated by keys:
// a jump to each policy's chain (named by polChain), whose rules accept,
// then deny.
func isolationChain(name string, keys []string, dir selectors.Direction, polChain func(string, selectors.Direction) string, deny []ruleSpec) *chainSpec {
	c := &chainSpec{name: name, dir: dir}
	for _, k := range keys {
		c.rules = append(c.rules, ruleSpec{verdict: verdictJump, target: polChain(k, dir)})
	}
	c.rules = append(c.rules, deny...)
	return c
}

// policyRules are the rules of p's chain for dir: each accepts what one
// rule of the policy allows.
func policyRules(u *peerUnions, p *selectors.PolicyRules, dir selectors.Direction) []ruleSpec {
	var out []ruleSpec
	for idx, r := range p.Rules(dir) {
		out = append(out, compileRule(u, p.Key, dir, idx, r)...)
	}
	return out
}

// compileSets adds the peer address sets and named-port sets of m, taking
// from c's last table every set whose model content is unchanged and
// applying to it the Delta of a set that changed since (c may be nil).
func compileSets(rs *Ruleset, m *selectors.Model, c *Compiler, names *names) {
	var prev *Ruleset
	if c != nil {
		prev = c.prev
		c.addrSets.begin()
		defer c.addrSets.end()
		c.portSets.begin()
		defer c.portSets.end()
	}
	reuse := func(names ...string) bool {
		if prev == nil {
			return false
		}
		for _, n := range names {
			if prev.sets[n] == nil {
				return false
			}
		}
		for _, n := range names {
			rs.sets[n] = prev.sets[n]
		}
		return true
	}
	for i := range m.AddrSets {
		s := &m.AddrSets[i]
		var p *selectors.AddrSet
		if c != nil {
			if e := c.addrSets.last(s.ID); e != nil {
				last := e.value // a copy: the entry is set to s below
				p = &last
			}
		}
		same := p != nil && (s.Version != nil && p.Version == s.Version ||
			p.Description == s.Description && slices.Equal(p.Addrs, s.Addrs) && slices.Equal(p.Ranges, s.Ranges))
		if c != nil && !(same && s.Version == nil) {
			c.addrSets.use(s.ID).value = keptAddrSet(s)
		} else if c != nil {
			c.addrSets.use(s.ID) // an equal copy is kept already
		}
		if same && reuse(names.addrSet(s.ID, 4), names.addrSet(s.ID, 6)) {
			continue
		}
		specs, ok := [2]*setSpec{}, false
		if p != nil && prev != nil && s.Delta != nil && p.Version != nil && p.Version == s.Delta.From {
			specs, ok = addrSetFromDelta(prev, s)
		}
		if !ok {
			specs = addrSetSpecs(s)
			if c != nil {
				specs[0].serial, specs[1].serial = newSerial(), newSerial()
			}
		}
		for _, spec := range specs {
			rs.sets[spec.name] = spec
		}
	}
	for i := range m.PortSets {
		s := &m.PortSets[i]
		var p *selectors.PortSet
		if c != nil {
			if e := c.portSets.last(s.ID); e != nil {
				last := e.value // a copy: the entry is set to s below
				p = &last
			}
		}
		same := p != nil && p.Description == s.Description && slices.Equal(p.Entries, s.Entries)
		if c != nil && !same {
			c.portSets.use(s.ID).value = selectors.PortSet{ID: s.ID, Description: s.Description, Entries: slices.Clone(s.Entries)}
		} else if c != nil {
			c.portSets.use(s.ID)
		}
		if same && reuse(names.portSet(s.ID, 4), names.portSet(s.ID, 6)) {
			continue
		}
		for _, spec := range portSetSpecs(s) {
			rs.sets[spec.name] = spec
		}
	}
}

// keptAddrSet is what a Compiler keeps of s for the next compile: s
// itself when it has a Version (a versioned set never changes, see
// selectors.AddrSet.Version), else a copy.
func keptAddrSet(s *selectors.AddrSet) selectors.AddrSet {
	if s.Version != nil {
		return *s
	}
	return selectors.AddrSet{ID: s.ID, Description: s.Description, Addrs: slices.Clone(s.Addrs), Ranges: slices.Clone(s.Ranges)}
}

// denyRules end an isolation chain: log (if asked), count, then drop or
// reject.
func denyRules(cfg Config, dir selectors.Direction) []ruleSpec {
	comment := "deny " + dir.String()
	var rules []ruleSpec
	if cfg.LogDenied {
		rules = append(rules, ruleSpec{limitRate: cfg.LogRate, logGroup: cfg.LogGroup, logPrefix: logPrefix(dir)})
	}
	if cfg.Deny == DenyReject {
		return append(rules,
			ruleSpec{l4proto: selectors.ProtocolTCP, counter: true, verdict: verdictRejectTCP, comment: comment},
			ruleSpec{counter: true, verdict: verdictRejectICMPX, comment: comment})
	}
	return append(rules, ruleSpec{counter: true, verdict: verdictDrop, comment: comment})
}

// compileRule turns one model rule into nft rules: one per (peer set part,
// port part) pair, since a rule can match one set per field.
func compileRule(u *peerUnions, policy string, dir selectors.Direction, idx int, r selectors.Rule) []ruleSpec {
	comment := truncateComment(fmt.Sprintf("%s %s[%d]", policy, dir, idx))
	out := ruleMatches(u, dir, r.Peers, r.Ports)
	for i := range out {
		out[i].counter, out[i].verdict, out[i].comment = true, verdictAccept, comment
	}
	return out
}

// ruleMatches returns the matches of one rule, without counter, verdict
// or comment: one per (peer set part, port part) pair of the same family.
// u merges the rule's ipBlock peers into one set (unions.go); nil keeps
// one set per peer.
func ruleMatches(u *peerUnions, dir selectors.Direction, pm selectors.PeerMatch, ports selectors.PortMatch) []ruleSpec {
	peerField := fieldSaddr
	if dir == selectors.Egress {
		peerField = fieldDaddr
	}
	type peerPart struct {
		family int
		set    string
	}
	var peers []peerPart
	if pm.All {
		peers = []peerPart{{}}
	} else {
		for _, names := range u.setNames(pm.Sets) {
			peers = append(peers, peerPart{4, names[0]}, peerPart{6, names[1]})
		}
	}
	if len(peers) == 0 {
		return nil
	}

	type portPart struct {
		proto       selectors.Protocol
		first, last uint16
		named       string
		services    string
		family      int
	}
	var parts []portPart
	if ports.All {
		parts = []portPart{{}}
	} else {
		// The rule's single ports, when it has several, are one lookup
		// (sets.go, kindServices), ahead of its port ranges.
		services := u.serviceSet(ports.Ranges)
		if services != "" {
			parts = append(parts, portPart{services: services})
		}
		for _, pr := range ports.Ranges {
			if services == "" || !singlePort(pr) {
				parts = append(parts, portPart{proto: pr.Protocol, first: pr.First, last: pr.Last})
			}
		}
		if ports.Named != "" {
			parts = append(parts, portPart{named: portSetName(ports.Named, 4), family: 4}, portPart{named: portSetName(ports.Named, 6), family: 6})
		}
	}

	var out []ruleSpec
	for _, pe := range peers {
		for _, po := range parts {
			if pe.family != 0 && po.family != 0 && pe.family != po.family {
				continue
			}
			var rs ruleSpec
			rs.family = pe.family
			if po.family != 0 {
				rs.family = po.family
			}
			if pe.set != "" {
				rs.setOn, rs.set = peerField, pe.set
			}
			if po.named != "" {
				rs.portSet = po.named
			} else if po.services != "" {
				rs.serviceSet = po.services
			} else if po.proto != 0 {
				rs.l4proto = po.proto
				if !(po.first == 0 && po.last == 65535) {
					rs.portFirst, rs.portLast = po.first, po.last
				}
			}
			out = append(out, rs)
		}
	}
	return out
}
