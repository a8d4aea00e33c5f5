package nft

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	"github.com/go-logr/logr"

	"github.com/nftpol/nftpol/selectors"
)

// DenyAction is what the isolation chains do with packets no rule allows.
type DenyAction string

// The deny actions.
const (
	DenyDrop   DenyAction = "drop"
	DenyReject DenyAction = "reject"
)

// ParseDenyAction validates a --deny-action value.
func ParseDenyAction(s string) (DenyAction, error) {
	switch DenyAction(s) {
	case DenyDrop, DenyReject:
		return DenyAction(s), nil
	}
	return "", fmt.Errorf("--deny-action must be drop or reject, not %q", s)
}

// Config says which table to program, where, and how.
type Config struct {
	// Table is the name of our inet table.
	Table string
	// NetNSPath programs the network namespace at this path; "" is our own.
	NetNSPath string
	Deny      DenyAction
	Logger    logr.Logger
	// LogDenied sends the denied packets, at most LogRate per second per
	// isolation chain, to NFLOG group LogGroup (see ReadDenied).
	LogDenied bool
	LogGroup  uint16
	LogRate   uint32
}

// The fixed objects of the table.
const (
	MapIngressV4 = "ingress_v4"
	MapIngressV6 = "ingress_v6"
	MapEgressV4  = "egress_v4"
	MapEgressV6  = "egress_v6"

	ChainForwardEgress  = "forward-egress"
	ChainForwardIngress = "forward-ingress"
	ChainInputEgress    = "input-egress"
)

// ICMPv6 neighbour discovery message types.
const (
	ndNeighborSolicit = 135
	ndNeighborAdvert  = 136
)

// setKind is the shape of a set's key.
type setKind uint8

const (
	kindAddr4     setKind = iota // ipv4_addr
	kindAddr6                    // ipv6_addr
	kindInterval4                // ipv4_addr, flags interval
	kindInterval6                // ipv6_addr, flags interval
	kindPorts4                   // ipv4_addr . inet_proto . inet_service
	kindPorts6                   // ipv6_addr . inet_proto . inet_service
	kindVmap4                    // ipv4_addr : verdict
	kindVmap6                    // ipv6_addr : verdict
)

func (k setKind) family() int {
	switch k {
	case kindAddr6, kindInterval6, kindPorts6, kindVmap6:
		return 6
	}
	return 4
}

func (k setKind) interval() bool { return k == kindInterval4 || k == kindInterval6 }
func (k setKind) vmap() bool     { return k == kindVmap4 || k == kindVmap6 }

// setSpec is one named set of the desired table.
type setSpec struct {
	name    string
	kind    setKind
	comment string
	// elems maps an element's key bytes (as a string) to its value: the
	// jump target for a verdict map, else "". For interval sets the key is
	// the 2×len range [first, last] so that a range is one element here.
	elems map[string]string
}

// chainSpec is one chain: a base chain when hook is set.
type chainSpec struct {
	name  string
	hook  string // "forward", "input" or "" for a regular chain
	prio  int32
	rules []ruleSpec
	// policies and dir say whose counters the chain holds: the policy of
	// a policy chain (its accepts), or the isolating policies of an
	// isolation chain (its denies).
	policies []string
	dir      selectors.Direction
	isolates bool
}

// Ruleset is the desired content of our table. Compile makes it, Diff
// compares two of them, the Enforcer commits it.
type Ruleset struct {
	Table  string
	chains map[string]*chainSpec
	sets   map[string]*setSpec
}

// Counts returns the number of chains, rules, sets and set elements.
func (r *Ruleset) Counts() (chains, rules, sets, elems int) {
	for _, c := range r.chains {
		chains++
		rules += len(c.rules)
	}
	for _, s := range r.sets {
		sets++
		elems += len(s.elems)
	}
	return
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

// Names of the derived objects. They depend only on the identities the
// model gives (policy keys, set IDs), so a restart or another node computes
// the same names for the same things.
func policyChainName(key string, dir selectors.Direction) string {
	if dir == selectors.Egress {
		return "pol-" + shortHash(key) + "-eg"
	}
	return "pol-" + shortHash(key) + "-in"
}

func isolationChainName(keys []string, dir selectors.Direction) string {
	h := shortHash(strings.Join(keys, "\n"))
	if dir == selectors.Egress {
		return "iso-eg-" + h
	}
	return "iso-in-" + h
}

func addrSetName(id string, family int) string {
	return fmt.Sprintf("a-%s-v%d", shortHash(id), family)
}

func portSetName(id string, family int) string {
	return fmt.Sprintf("p-%s-v%d", shortHash(id), family)
}

// Compile returns the table that enforces m.
func Compile(m *selectors.Model, cfg Config) *Ruleset {
	return compileReusing(m, cfg, nil, nil)
}

// compileReusing is Compile that takes the compiled sets of prev (the
// table compiled from prevModel) for every address and port set whose
// content did not change. A sync after one pod change then compiles the
// few sets that changed, not every element of the table, and Diff skips
// the sets it shares with the committed table. Specs are never modified
// once compiled, so sharing them is safe.
func compileReusing(m *selectors.Model, cfg Config, prev *Ruleset, prevModel *selectors.Model) *Ruleset {
	table := cfg.Table
	if table == "" {
		table = "nftpol"
	}
	rs := &Ruleset{Table: table, chains: map[string]*chainSpec{}, sets: map[string]*setSpec{}}
	for _, v := range []struct {
		name string
		kind setKind
		what string
	}{
		{MapIngressV4, kindVmap4, "local pods isolated for ingress (IPv4)"},
		{MapIngressV6, kindVmap6, "local pods isolated for ingress (IPv6)"},
		{MapEgressV4, kindVmap4, "local pods isolated for egress (IPv4)"},
		{MapEgressV6, kindVmap6, "local pods isolated for egress (IPv6)"},
	} {
		rs.sets[v.name] = &setSpec{name: v.name, kind: v.kind, comment: v.what, elems: map[string]string{}}
	}
	established := ruleSpec{ctEstablished: true, verdict: verdictAccept}
	rs.chains[ChainForwardEgress] = &chainSpec{name: ChainForwardEgress, hook: "forward", prio: 0, rules: []ruleSpec{
		established,
		{family: 4, vmapOn: fieldSaddr, vmap: MapEgressV4},
		{family: 6, vmapOn: fieldSaddr, vmap: MapEgressV6},
	}}
	rs.chains[ChainForwardIngress] = &chainSpec{name: ChainForwardIngress, hook: "forward", prio: 1, rules: []ruleSpec{
		established,
		{family: 4, vmapOn: fieldDaddr, vmap: MapIngressV4},
		{family: 6, vmapOn: fieldDaddr, vmap: MapIngressV6},
	}}
	rs.chains[ChainInputEgress] = &chainSpec{name: ChainInputEgress, hook: "input", prio: 0, rules: []ruleSpec{
		established,
		// Neighbour discovery from a pod to its node is no connection a
		// policy speaks of; without it an egress-isolated pod loses IPv6
		// altogether, replies to allowed connections included.
		{icmpv6Type: ndNeighborSolicit, verdict: verdictAccept},
		{icmpv6Type: ndNeighborAdvert, verdict: verdictAccept},
		{family: 4, vmapOn: fieldSaddr, vmap: MapEgressV4},
		{family: 6, vmapOn: fieldSaddr, vmap: MapEgressV6},
	}}

	var prevAddr map[string]*selectors.AddrSet
	var prevPort map[string]*selectors.PortSet
	if prev != nil && prevModel != nil {
		prevAddr = make(map[string]*selectors.AddrSet, len(prevModel.AddrSets))
		for i := range prevModel.AddrSets {
			prevAddr[prevModel.AddrSets[i].ID] = &prevModel.AddrSets[i]
		}
		prevPort = make(map[string]*selectors.PortSet, len(prevModel.PortSets))
		for i := range prevModel.PortSets {
			prevPort[prevModel.PortSets[i].ID] = &prevModel.PortSets[i]
		}
	}
	reuse := func(names ...string) bool {
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
		if p := prevAddr[s.ID]; p != nil && p.Description == s.Description &&
			slices.Equal(p.Addrs, s.Addrs) && slices.Equal(p.Ranges, s.Ranges) &&
			reuse(addrSetName(s.ID, 4), addrSetName(s.ID, 6)) {
			continue
		}
		compileAddrSet(rs, s)
	}
	for i := range m.PortSets {
		s := &m.PortSets[i]
		if p := prevPort[s.ID]; p != nil && p.Description == s.Description &&
			slices.Equal(p.Entries, s.Entries) &&
			reuse(portSetName(s.ID, 4), portSetName(s.ID, 6)) {
			continue
		}
		compilePortSet(rs, s)
	}
	used := map[string]bool{} // policy chains that some pod jumps to
	for _, pod := range m.Pods {
		for _, dir := range []selectors.Direction{selectors.Ingress, selectors.Egress} {
			keys := pod.Ingress
			maps := [2]string{MapIngressV4, MapIngressV6}
			if dir == selectors.Egress {
				keys = pod.Egress
				maps = [2]string{MapEgressV4, MapEgressV6}
			}
			if len(keys) == 0 {
				continue
			}
			iso := isolationChainName(keys, dir)
			if _, ok := rs.chains[iso]; !ok {
				c := &chainSpec{name: iso, policies: keys, dir: dir, isolates: true}
				for _, k := range keys {
					target := policyChainName(k, dir)
					used[target] = true
					c.rules = append(c.rules, ruleSpec{verdict: verdictJump, target: target})
				}
				c.rules = append(c.rules, denyRules(cfg, dir)...)
				rs.chains[iso] = c
			}
			for _, ip := range pod.IPs {
				m := maps[0]
				if ip.Is6() {
					m = maps[1]
				}
				rs.sets[m].elems[addrKey(ip)] = iso
			}
		}
	}
	for i := range m.Policies {
		p := &m.Policies[i]
		for _, dir := range []selectors.Direction{selectors.Ingress, selectors.Egress} {
			name := policyChainName(p.Key, dir)
			if !used[name] {
				continue
			}
			rules := p.Ingress
			if dir == selectors.Egress {
				rules = p.Egress
			}
			c := &chainSpec{name: name, policies: []string{p.Key}, dir: dir}
			for idx, r := range rules {
				c.rules = append(c.rules, compileRule(p.Key, dir, idx, r)...)
			}
			rs.chains[name] = c
		}
	}
	// A pod may name a policy the model has no rules for (not from
	// BuildModel, but Compile must never produce a jump to nowhere, which
	// would fail the whole commit): such a policy allows nothing.
	for _, pod := range m.Pods {
		for _, dir := range []selectors.Direction{selectors.Ingress, selectors.Egress} {
			keys := pod.Ingress
			if dir == selectors.Egress {
				keys = pod.Egress
			}
			for _, k := range keys {
				if name := policyChainName(k, dir); rs.chains[name] == nil {
					rs.chains[name] = &chainSpec{name: name, policies: []string{k}, dir: dir}
				}
			}
		}
	}
	return rs
}

// denyRules end an isolation chain: count, then drop or reject.
func denyRules(cfg Config, dir selectors.Direction) []ruleSpec {
	comment := "deny " + dir.String()
	var rules []ruleSpec
	if cfg.LogDenied {
		prefix := logPrefixIngress
		if dir == selectors.Egress {
			prefix = logPrefixEgress
		}
		rate := cfg.LogRate
		if rate == 0 {
			rate = 10
		}
		rules = append(rules, ruleSpec{limitRate: rate, logGroup: cfg.LogGroup, logPrefix: prefix})
	}
	if cfg.Deny == DenyReject {
		return append(rules,
			ruleSpec{l4proto: selectors.ProtocolTCP, counter: true, verdict: verdictRejectTCP, comment: comment},
			ruleSpec{counter: true, verdict: verdictRejectICMPX, comment: comment})
	}
	return append(rules, ruleSpec{counter: true, verdict: verdictDrop, comment: comment})
}

func compileAddrSet(rs *Ruleset, s *selectors.AddrSet) {
	interval := len(s.Ranges) > 0
	for _, fam := range []int{4, 6} {
		kind := kindAddr4
		switch {
		case interval && fam == 4:
			kind = kindInterval4
		case interval && fam == 6:
			kind = kindInterval6
		case fam == 6:
			kind = kindAddr6
		}
		n := len(s.Ranges)
		for _, a := range s.Addrs {
			if familyOf(a) == fam {
				n++
			}
		}
		spec := &setSpec{name: addrSetName(s.ID, fam), kind: kind, comment: truncateComment(s.Description), elems: make(map[string]string, n)}
		for _, a := range s.Addrs {
			if familyOf(a) == fam {
				if interval {
					spec.elems[rangeKey(a, a)] = ""
				} else {
					spec.elems[addrKey(a)] = ""
				}
			}
		}
		for _, r := range s.Ranges {
			if familyOf(r.First) == fam {
				spec.elems[rangeKey(r.First, r.Last)] = ""
			}
		}
		rs.sets[spec.name] = spec
	}
}

func compilePortSet(rs *Ruleset, s *selectors.PortSet) {
	for _, fam := range []int{4, 6} {
		kind := kindPorts4
		if fam == 6 {
			kind = kindPorts6
		}
		spec := &setSpec{name: portSetName(s.ID, fam), kind: kind, comment: truncateComment(s.Description), elems: map[string]string{}}
		for _, e := range s.Entries {
			if familyOf(e.Addr) == fam {
				spec.elems[string(portKey(e.Addr, e.Protocol, e.Port))] = ""
			}
		}
		rs.sets[spec.name] = spec
	}
}

// addrKey is the key of an address element: its bytes, as the kernel
// takes them. (Built from an array: one allocation per element, which
// counts at 100k elements per sync.)
func addrKey(a netip.Addr) string {
	if a.Is4() {
		b := a.As4()
		return string(b[:])
	}
	b := a.As16()
	return string(b[:])
}

// rangeKey is the key of an interval element [first, last].
func rangeKey(first, last netip.Addr) string {
	if first.Is4() {
		f, l := first.As4(), last.As4()
		return string(append(f[:], l[:]...))
	}
	f, l := first.As16(), last.As16()
	return string(append(f[:], l[:]...))
}

// portKey is the key of a concatenated (address . protocol . port) element:
// each field padded to a multiple of 4 bytes, as registers hold them.
func portKey(a netip.Addr, proto selectors.Protocol, port uint16) []byte {
	key := append([]byte(nil), a.AsSlice()...)
	key = append(key, byte(proto), 0, 0, 0)
	key = append(key, byte(port>>8), byte(port), 0, 0)
	return key
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// truncateComment keeps comments within what the kernel stores for
// userdata (the nft tool limits comments to 128 bytes).
func truncateComment(s string) string {
	if len(s) > 120 {
		return s[:117] + "..."
	}
	return s
}

// compileRule turns one model rule into nft rules: one per (peer set part,
// port part) pair, since a rule can match one set per field.
func compileRule(policy string, dir selectors.Direction, idx int, r selectors.Rule) []ruleSpec {
	peerField := fieldSaddr
	if dir == selectors.Egress {
		peerField = fieldDaddr
	}
	comment := truncateComment(fmt.Sprintf("%s %s[%d]", policy, dir, idx))

	type peerPart struct {
		family int
		set    string
	}
	var peers []peerPart
	if r.Peers.All {
		peers = []peerPart{{}}
	} else {
		for _, id := range r.Peers.Sets {
			peers = append(peers, peerPart{4, addrSetName(id, 4)}, peerPart{6, addrSetName(id, 6)})
		}
	}

	type portPart struct {
		proto       selectors.Protocol
		first, last uint16
		named       string
		family      int
	}
	var ports []portPart
	if r.Ports.All {
		ports = []portPart{{}}
	} else {
		for _, pr := range r.Ports.Ranges {
			ports = append(ports, portPart{proto: pr.Protocol, first: pr.First, last: pr.Last})
		}
		if r.Ports.Named != "" {
			ports = append(ports, portPart{named: portSetName(r.Ports.Named, 4), family: 4}, portPart{named: portSetName(r.Ports.Named, 6), family: 6})
		}
	}

	var out []ruleSpec
	for _, pe := range peers {
		for _, po := range ports {
			if pe.family != 0 && po.family != 0 && pe.family != po.family {
				continue
			}
			rs := ruleSpec{counter: true, verdict: verdictAccept, comment: comment}
			rs.family = pe.family
			if po.family != 0 {
				rs.family = po.family
			}
			if pe.set != "" {
				rs.setOn, rs.set = peerField, pe.set
			}
			if po.named != "" {
				rs.portSet = po.named
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

// sortedChainNames returns chain names in a stable order.
func (r *Ruleset) sortedChainNames() []string {
	names := make([]string, 0, len(r.chains))
	for n := range r.chains {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (r *Ruleset) sortedSetNames() []string {
	names := make([]string, 0, len(r.sets))
	for n := range r.sets {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}
