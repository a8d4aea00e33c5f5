package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/selectors"
)

// This file reads our table back from the kernel into a Ruleset, exactly:
// every chain's hook, priority, type and policy, every rule decoded by the
// inverse of its encoding (rules.go), every set's kind and elements
// decoded by the inverses in sets.go. Whatever it does not recognize
// becomes something no compiled Ruleset holds, never an error or a panic,
// so Verify reports it as drift and `nftpol dump` prints it.

// ErrNoTable is returned by ReadTable when our table does not exist.
var ErrNoTable = errors.New("table not found")

// ErrDrift is wrapped by Verify when the kernel's table differs from what
// was committed.
var ErrDrift = errors.New("table differs from the committed ruleset")

// Chain types and policies as the kernel names them.
const (
	chainTypeFilter   = string(nftables.ChainTypeFilter)
	chainPolicyAccept = "accept"
)

// ReadTable reads our table back from the kernel.
func (e *Enforcer) ReadTable() (*Ruleset, error) {
	c, err := e.readConn()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.CloseLasting() }()
	return e.readTable(c)
}

func (e *Enforcer) readTable(c *nftables.Conn) (*Ruleset, error) {
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == e.cfg.Table }) {
		return nil, ErrNoTable
	}
	rs := newRuleset(e.cfg.Table)
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != e.cfg.Table {
			continue
		}
		rs.chains[ch.Name] = chainFromKernel(ch)
	}
	rules, err := e.dumpRules()
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		spec := rs.chains[r.chain]
		if spec == nil {
			// A chain created between the two dumps: read it next time.
			continue
		}
		rule := decodeRule(r.exprs, r.unknown)
		if comment, ok := userdata.GetString(r.userData, userdata.TypeComment); ok {
			rule.comment = comment
		}
		spec.rules = append(spec.rules, rule)
	}
	setMsgs, err := e.dumpTable(unix.NFT_MSG_GETSET, unix.NFTA_SET_TABLE)
	if err != nil {
		return nil, err
	}
	for _, m := range setMsgs {
		name, shape, comment, err := setFromMessage(m.Data)
		if err != nil {
			return nil, fmt.Errorf("decoding a set of table %s: %w", e.cfg.Table, err)
		}
		kind := kindOf(shape)
		// google/nftables reads elements by name and table only.
		elems, err := c.GetSetElements(&nftables.Set{Table: e.table, Name: name, Interval: kind.interval(), IsMap: kind.vmap()})
		if err != nil {
			return nil, fmt.Errorf("reading set %s: %w", name, err)
		}
		rs.sets[name] = &setSpec{name: name, kind: kind, comment: comment, elems: elementsOf(elemsFromKernel(kind, elems))}
	}
	annotateChains(rs)
	return rs, nil
}

// chainFromKernel is the inverse of toKernelChain.
func chainFromKernel(ch *nftables.Chain) *chainSpec {
	spec := &chainSpec{name: ch.Name}
	if ch.Hooknum == nil {
		return spec
	}
	switch *ch.Hooknum {
	case *nftables.ChainHookForward:
		spec.hook = hookForward
	case *nftables.ChainHookInput:
		spec.hook = hookInput
	default:
		spec.hook = hook(fmt.Sprintf("hook-%d", *ch.Hooknum))
	}
	if ch.Priority != nil {
		spec.prio = int32(*ch.Priority)
	}
	spec.typ = string(ch.Type)
	spec.policy = "none"
	if ch.Policy != nil {
		switch *ch.Policy {
		case nftables.ChainPolicyAccept:
			spec.policy = chainPolicyAccept
		case nftables.ChainPolicyDrop:
			spec.policy = "drop"
		default:
			spec.policy = fmt.Sprintf("policy-%d", *ch.Policy)
		}
	}
	if ch.Device != "" {
		spec.typ += " device " + ch.Device
	}
	return spec
}

// dumpedRule is one rule of a rule dump, its expressions decoded.
type dumpedRule struct {
	chain    string
	exprs    []expr.Any
	unknown  []string // expressions of a kind this reader does not decode
	userData []byte
}

// dumpRules reads every rule of our table with one netlink dump.
// google/nftables reads one chain per request (a table of 1k chains is 1k
// requests) and silently drops expressions it does not know, which would
// let a rule with such an expression read back as one of ours.
func (e *Enforcer) dumpRules() ([]dumpedRule, error) {
	msgs, err := e.dumpTable(unix.NFT_MSG_GETRULE, unix.NFTA_RULE_TABLE)
	if err != nil {
		return nil, err
	}
	out := make([]dumpedRule, 0, len(msgs))
	for _, m := range msgs {
		r, err := decodeRuleMessage(m.Data)
		if err != nil {
			return nil, fmt.Errorf("decoding a rule of table %s: %w", e.cfg.Table, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// dumpTable runs one netlink dump request of our table's objects of one
// type (tableAttr names the table in that object's attribute space).
func (e *Enforcer) dumpTable(msgType, tableAttr uint16) ([]netlink.Message, error) {
	cfg := &netlink.Config{}
	if e.netns != nil {
		cfg.NetNS = int(e.netns.Fd())
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	defer c.Close()
	if err := raiseBuffers(c); err != nil {
		return nil, err
	}
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: tableAttr, Data: []byte(e.cfg.Table + "\x00")}})
	if err != nil {
		return nil, err
	}
	// nfgenmsg: family, version, resource id (big endian).
	header := []byte{byte(nftables.TableFamilyINet), unix.NFNETLINK_V0, 0, 0}
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msgType),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append(header, attrs...),
	})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, ErrNoTable
		}
		return nil, fmt.Errorf("dumping table %s: %w", e.cfg.Table, err)
	}
	return msgs, nil
}

// decodeRuleMessage decodes one NFT_MSG_NEWRULE message of a dump.
func decodeRuleMessage(data []byte) (dumpedRule, error) {
	var r dumpedRule
	if len(data) < 4 {
		return r, errors.New("message shorter than its nfgenmsg header")
	}
	family := data[0]
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return r, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			r.chain = ad.String()
		case unix.NFTA_RULE_USERDATA:
			r.userData = ad.Bytes()
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					list.Nested(func(ex *netlink.AttributeDecoder) error {
						return r.addExpr(family, ex)
					})
				}
				return nil
			})
		}
	}
	return r, ad.Err()
}

// addExpr decodes one expression: with google/nftables' own decoder for
// the kinds nftpol writes, and as an unknown name for every other kind.
func (r *dumpedRule) addExpr(family byte, ex *netlink.AttributeDecoder) error {
	name, data, err := exprAttrs(ex)
	if err != nil {
		return err
	}
	var e expr.Any
	switch name {
	case "meta":
		e = &expr.Meta{}
	case "cmp":
		e = &expr.Cmp{}
	case "ct":
		e = &expr.Ct{}
	case "bitwise":
		e = &expr.Bitwise{}
	case "payload":
		e = &expr.Payload{}
	case "lookup":
		e = &expr.Lookup{}
	case "range":
		e = &expr.Range{}
	case "limit":
		e = &expr.Limit{}
	case "log":
		e = &expr.Log{}
	case "counter":
		e = &expr.Counter{}
	case "reject":
		e = &expr.Reject{}
	case "fib":
		e = &expr.Fib{}
	case "immediate":
		// A verdict is an immediate into the verdict register; nftpol
		// writes no other immediate.
		imm := &expr.Immediate{}
		if err := expr.Unmarshal(family, data, imm); err != nil || imm.Register != unix.NFT_REG_VERDICT || len(imm.Data) != 0 {
			r.unknown = append(r.unknown, "immediate (data)")
			return nil
		}
		e = &expr.Verdict{}
	default:
		r.unknown = append(r.unknown, name)
		return nil
	}
	if err := expr.Unmarshal(family, data, e); err != nil {
		r.unknown = append(r.unknown, name+" (undecodable)")
		return nil
	}
	r.exprs = append(r.exprs, e)
	return nil
}

// exprAttrs reads the name and the raw data of one expression of a rule
// dump.
func exprAttrs(ex *netlink.AttributeDecoder) (name string, data []byte, err error) {
	ex.ByteOrder = binary.BigEndian
	for ex.Next() {
		switch ex.Type() {
		case unix.NFTA_EXPR_NAME:
			name = ex.String()
		case unix.NFTA_EXPR_DATA:
			data = ex.Bytes()
		}
	}
	return name, data, ex.Err()
}

// annotateChains recovers which policies a chain read from the kernel comes
// from: policy chains from their rule comments ("ns/name ingress[0]"),
// isolation chains from the policy chains they jump to.
func annotateChains(rs *Ruleset) {
	for _, c := range rs.chains {
		for _, r := range c.rules {
			key, rest, ok := strings.Cut(r.comment, " ")
			if ok && r.verdict == verdictAccept && strings.Contains(key, "/") {
				c.policies = []string{key}
				c.dir = selectors.Ingress
				if strings.HasPrefix(rest, "egress[") {
					c.dir = selectors.Egress
				}
				break
			}
		}
	}
	for _, c := range rs.chains {
		annotateClusterChain(c)
	}
	for _, c := range rs.chains {
		if !strings.HasPrefix(c.name, "iso-") {
			continue
		}
		c.isolates = true
		c.dir = selectors.Ingress
		if strings.HasPrefix(c.name, "iso-eg-") {
			c.dir = selectors.Egress
		}
		c.lookups = countLookups(c.rules)
		for i, r := range c.rules {
			targets := lookupTargets(rs, &c.rules[i])
			if r.verdict == verdictJump {
				targets = append(targets, r.target)
			}
			for _, target := range targets {
				name := target
				if t := rs.chains[target]; t != nil && len(t.policies) == 1 {
					name = t.policies[0]
				}
				if !slices.Contains(c.policies, name) {
					c.policies = append(c.policies, name)
				}
			}
		}
	}
	annotateAuditChains(rs)
}

// annotateClusterChain recovers the tier, direction, policies (from the
// rule comments, in order) and next tier of a ClusterNetworkPolicy chain.
func annotateClusterChain(c *chainSpec) {
	// The tier is set only on a chain of a tier: a NetworkPolicy chain
	// annotated as Admin would be dumped and counted as one.
	if rest, ok := strings.CutPrefix(c.name, tieChainPrefix); ok {
		c.dir = selectors.Ingress
		if strings.HasPrefix(rest, "eg-") {
			c.dir = selectors.Egress
		}
		for _, r := range c.rules {
			if r.verdict == verdictGoto {
				c.next = r.target
			}
		}
		return
	}
	tier := selectors.TierAdmin
	rest, ok := strings.CutPrefix(c.name, adminChainPrefix)
	if !ok {
		if rest, ok = strings.CutPrefix(c.name, baselineChainPrefix); !ok {
			return
		}
		tier = selectors.TierBaseline
	}
	c.tier = tier
	c.dir = selectors.Ingress
	if strings.HasPrefix(rest, "eg-") {
		c.dir = selectors.Egress
	}
	c.policies = nil
	for _, r := range c.rules {
		label, ok := strings.CutPrefix(r.comment, clusterCommentPrefix)
		if ok {
			name, _, _ := strings.Cut(label, " ")
			if len(c.policies) == 0 || c.policies[len(c.policies)-1] != name {
				c.policies = append(c.policies, name)
			}
		}
		if r.verdict == verdictGoto && r.comment == "" {
			c.next = r.target
		}
	}
}

// Verify reads our table back and compares it with what was committed:
// every chain with its hook, priority, type, policy and rules, every set
// with its kind, comment and elements. Nothing committed yet verifies
// trivially.
//
// It holds no lock while it reads, so commits go on meanwhile (reading a
// table of 100k elements takes seconds, which a sync must not wait for).
// A commit during the read makes what was read neither the old table nor
// the new one for sure: then Verify concludes nothing and returns nil,
// and the next verification reads again.
func (e *Enforcer) Verify() error {
	return e.verify(e.ReadTable)
}

// verify is Verify with the table read by read.
func (e *Enforcer) verify(read func() (*Ruleset, error)) error {
	e.mu.Lock()
	want, writes := e.committed, e.writes
	e.mu.Unlock()
	if want == nil {
		return nil
	}
	got, err := read()
	if err == nil {
		err = compareRulesets(want, got)
	}
	if err == nil {
		return nil
	}
	e.mu.Lock()
	moved := e.writes != writes
	e.mu.Unlock()
	if moved {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrDrift, err)
}

// compareRulesets returns the first difference of got from want.
func compareRulesets(want, got *Ruleset) error {
	for _, name := range got.sortedChainNames() {
		if _, ok := want.chains[name]; !ok {
			return fmt.Errorf("unexpected chain %s", name)
		}
	}
	for _, name := range want.sortedChainNames() {
		w, g := want.chains[name], got.chains[name]
		switch {
		case g == nil:
			return fmt.Errorf("chain %s is missing", name)
		case g.hook != w.hook || g.prio != w.prio || g.typ != w.typ || g.policy != w.policy:
			return fmt.Errorf("chain %s is type %q hook %q priority %d policy %q, want type %q hook %q priority %d policy %q",
				name, g.typ, g.hook, g.prio, g.policy, w.typ, w.hook, w.prio, w.policy)
		}
		if err := compareRules(w.rules, g.rules); err != nil {
			return fmt.Errorf("chain %s: %w", name, err)
		}
	}
	for _, name := range got.sortedSetNames() {
		if _, ok := want.sets[name]; !ok {
			return fmt.Errorf("unexpected set %s", name)
		}
	}
	for _, name := range want.sortedSetNames() {
		w, g := want.sets[name], got.sets[name]
		if g == nil {
			return fmt.Errorf("set %s is missing", name)
		}
		if err := compareSets(w, g); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

func compareRules(want, got []ruleSpec) error {
	for i := range max(len(want), len(got)) {
		switch {
		case i >= len(got):
			return fmt.Errorf("rule %d is missing: %s", i, want[i].String())
		case i >= len(want):
			return fmt.Errorf("unexpected rule %d: %s", i, got[i].String())
		case got[i] != want[i]:
			return fmt.Errorf("rule %d is %s, want %s", i, got[i].String(), want[i].String())
		}
	}
	return nil
}

// compareSets checks a set read back against the committed one.
func compareSets(want, got *setSpec) error {
	if want.kind != got.kind {
		return fmt.Errorf("is %s, want %s", got.kind, want.kind)
	}
	if want.comment != got.comment {
		return fmt.Errorf("comment %q, want %q", got.comment, want.comment)
	}
	for _, k := range got.sortedKeys() {
		wv, ok := want.elems.lookup(k)
		if !ok {
			return fmt.Errorf("unexpected element %s", describeKey(got.kind, k))
		}
		if v := got.elems.get(k); wv != v {
			return fmt.Errorf("element %s maps to %q, want %q", describeKey(got.kind, k), v, wv)
		}
	}
	if got.elems.len() != want.elems.len() {
		return fmt.Errorf("%d elements, want %d", got.elems.len(), want.elems.len())
	}
	return nil
}
