package nft

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/selectors"
)

// ErrNoTable is returned by ReadTable when our table does not exist.
var ErrNoTable = errors.New("table not found")

// ReadTable reads our table back from the kernel into the same form
// Compile produces, so that what was committed and what the kernel holds
// compare directly (Verify) and print the same way (`nftpol dump`).
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
	found := false
	for _, t := range tables {
		found = found || t.Name == e.cfg.Table
	}
	if !found {
		return nil, ErrNoTable
	}
	rs := &Ruleset{Table: e.cfg.Table, chains: map[string]*chainSpec{}, sets: map[string]*setSpec{}}
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("listing chains: %w", err)
	}
	for _, ch := range chains {
		if ch.Table.Name != e.cfg.Table {
			continue
		}
		spec := &chainSpec{name: ch.Name}
		if ch.Hooknum != nil {
			spec.hook = "forward"
			if *ch.Hooknum == *nftables.ChainHookInput {
				spec.hook = "input"
			}
			if ch.Priority != nil {
				spec.prio = int32(*ch.Priority)
			}
		}
		rules, err := c.GetRules(e.table, ch)
		if err != nil {
			return nil, fmt.Errorf("reading chain %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			rule, err := decodeRule(r.Exprs)
			if err != nil {
				return nil, fmt.Errorf("chain %s: %w", ch.Name, err)
			}
			if comment, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
				rule.comment = comment
			}
			spec.rules = append(spec.rules, rule)
		}
		rs.chains[ch.Name] = spec
	}
	sets, err := c.GetSets(e.table)
	if err != nil {
		return nil, fmt.Errorf("listing sets: %w", err)
	}
	for _, s := range sets {
		elems, err := c.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("reading set %s: %w", s.Name, err)
		}
		spec := &setSpec{name: s.Name, kind: kindOfSet(s), comment: s.Comment, elems: map[string]string{}}
		if spec.kind.interval() {
			for _, k := range intervalKeys(elems, spec.kind.family()) {
				spec.elems[k] = ""
			}
		} else {
			for _, el := range elems {
				v := ""
				if spec.kind.vmap() {
					v = verdictChain(el.Val)
				}
				spec.elems[string(el.Key)] = v
			}
		}
		rs.sets[s.Name] = spec
	}
	annotateChains(rs)
	return rs, nil
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
		if !strings.HasPrefix(c.name, "iso-") {
			continue
		}
		c.isolates = true
		c.dir = selectors.Ingress
		if strings.HasPrefix(c.name, "iso-eg-") {
			c.dir = selectors.Egress
		}
		for _, r := range c.rules {
			if r.verdict != verdictJump {
				continue
			}
			name := r.target
			if t := rs.chains[r.target]; t != nil && len(t.policies) == 1 {
				name = t.policies[0]
			}
			c.policies = append(c.policies, name)
		}
	}
}

// kindOfSet recognizes our set shapes; the family is in the name.
func kindOfSet(s *nftables.Set) setKind {
	v6 := strings.HasSuffix(s.Name, "6")
	pick := func(k4, k6 setKind) setKind {
		if v6 {
			return k6
		}
		return k4
	}
	switch {
	case s.IsMap:
		return pick(kindVmap4, kindVmap6)
	case s.Interval:
		return pick(kindInterval4, kindInterval6)
	case s.Concatenation, strings.Contains(s.KeyType.Name, " . "):
		// The nft tool flags only interval concatenations as such.
		return pick(kindPorts4, kindPorts6)
	}
	return pick(kindAddr4, kindAddr6)
}

// intervalKeys turns interval elements (a start, and an end at last+1
// unless the range reaches the top) back into first+last keys.
func intervalKeys(elems []nftables.SetElement, family int) []string {
	sort.Slice(elems, func(i, j int) bool { return string(elems[i].Key) < string(elems[j].Key) })
	n := 4
	if family == 6 {
		n = 16
	}
	var keys []string
	for i := 0; i < len(elems); i++ {
		if elems[i].IntervalEnd {
			continue
		}
		first := elems[i].Key
		last := make([]byte, n)
		for j := range last {
			last[j] = 0xff
		}
		if i+1 < len(elems) && elems[i+1].IntervalEnd {
			last = decrement(elems[i+1].Key)
			i++
		}
		keys = append(keys, string(first)+string(last))
	}
	return keys
}

func decrement(b []byte) []byte {
	out := append([]byte(nil), b...)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}

// decodeRule is the inverse of ruleSpec.exprs for the rules we write.
func decodeRule(exprs []expr.Any) (ruleSpec, error) {
	var r ruleSpec
	unknown := func(x expr.Any) (ruleSpec, error) {
		return ruleSpec{}, fmt.Errorf("a rule nftpol does not write: unexpected %T", x)
	}
	for i := 0; i < len(exprs); i++ {
		next := func() expr.Any {
			if i+1 < len(exprs) {
				i++
				return exprs[i]
			}
			return nil
		}
		switch x := exprs[i].(type) {
		case *expr.Meta:
			cmp, ok := next().(*expr.Cmp)
			if !ok || len(cmp.Data) != 1 {
				return unknown(x)
			}
			switch x.Key {
			case expr.MetaKeyNFPROTO:
				r.family = 4
				if cmp.Data[0] == unix.NFPROTO_IPV6 {
					r.family = 6
				}
			case expr.MetaKeyL4PROTO:
				if cmp.Data[0] == unix.IPPROTO_ICMPV6 {
					p, ok1 := next().(*expr.Payload)
					t, ok2 := next().(*expr.Cmp)
					if !ok1 || !ok2 || p.Base != expr.PayloadBaseTransportHeader || len(t.Data) != 1 {
						return unknown(x)
					}
					r.icmpv6Type = t.Data[0]
					continue
				}
				r.l4proto = selectors.Protocol(cmp.Data[0])
			default:
				return unknown(x)
			}
		case *expr.Ct:
			if _, ok := next().(*expr.Bitwise); !ok {
				return unknown(x)
			}
			if _, ok := next().(*expr.Cmp); !ok {
				return unknown(x)
			}
			r.ctEstablished = true
		case *expr.Payload:
			if x.Base == expr.PayloadBaseTransportHeader {
				switch m := next().(type) {
				case *expr.Cmp:
					r.portFirst = uint16(m.Data[0])<<8 | uint16(m.Data[1])
					r.portLast = r.portFirst
					// The nft tool writes "dport 1000-2000" as cmp gte
					// and cmp lte, where we write one range expression.
					if m.Op == expr.CmpOpGte && i+1 < len(exprs) {
						if hi, ok := exprs[i+1].(*expr.Cmp); ok && hi.Op == expr.CmpOpLte {
							r.portLast = uint16(hi.Data[0])<<8 | uint16(hi.Data[1])
							i++
						}
					}
				case *expr.Range:
					r.portFirst = uint16(m.FromData[0])<<8 | uint16(m.FromData[1])
					r.portLast = uint16(m.ToData[0])<<8 | uint16(m.ToData[1])
				default:
					return unknown(x)
				}
				continue
			}
			field := fieldDaddr
			if (x.Len == 4 && x.Offset == 12) || (x.Len == 16 && x.Offset == 8) {
				field = fieldSaddr
			}
			switch m := next().(type) {
			case *expr.Lookup:
				if m.IsDestRegSet {
					r.vmapOn, r.vmap = field, m.SetName
				} else {
					r.setOn, r.set = field, m.SetName
				}
			case *expr.Meta:
				// daddr . l4proto . dport
				if _, ok := next().(*expr.Payload); !ok {
					return unknown(m)
				}
				l, ok := next().(*expr.Lookup)
				if !ok {
					return unknown(m)
				}
				r.portSet = l.SetName
			default:
				return unknown(x)
			}
		case *expr.Counter:
			r.counter = true
		case *expr.Limit:
			r.limitRate = uint32(x.Rate)
		case *expr.Log:
			r.logGroup, r.logPrefix = x.Group, string(x.Data)
		case *expr.Verdict:
			switch x.Kind {
			case expr.VerdictAccept:
				r.verdict = verdictAccept
			case expr.VerdictDrop:
				r.verdict = verdictDrop
			case expr.VerdictJump:
				r.verdict, r.target = verdictJump, x.Chain
			default:
				return unknown(x)
			}
		case *expr.Reject:
			r.verdict = verdictRejectICMPX
			if x.Type == unix.NFT_REJECT_TCP_RST {
				r.verdict = verdictRejectTCP
			}
		default:
			return unknown(x)
		}
	}
	return r, nil
}

// String renders the table in nft syntax, with set sizes and, for the
// policy and isolation chains, the policies they come from.
func (r *Ruleset) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {\n", r.Table)
	for _, name := range r.sortedSetNames() {
		s := r.sets[name]
		fmt.Fprintf(&b, "\t# %d elements", len(s.elems))
		if s.comment != "" {
			fmt.Fprintf(&b, ": %s", s.comment)
		}
		fmt.Fprintf(&b, "\n\tset %s { %s }\n", name, s.kind)
	}
	for _, name := range r.sortedChainNames() {
		c := r.chains[name]
		if len(c.policies) > 0 {
			what := "allows of"
			if c.isolates {
				what = "isolation by"
			}
			fmt.Fprintf(&b, "\t# %s %s (%s)\n", what, strings.Join(c.policies, ", "), c.dir)
		}
		fmt.Fprintf(&b, "\tchain %s {\n", name)
		if c.hook != "" {
			fmt.Fprintf(&b, "\t\ttype filter hook %s priority %d; policy accept;\n", c.hook, c.prio)
		}
		for i := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", c.rules[i].String())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

func (k setKind) String() string {
	switch k {
	case kindAddr4:
		return "type ipv4_addr;"
	case kindAddr6:
		return "type ipv6_addr;"
	case kindInterval4:
		return "type ipv4_addr; flags interval;"
	case kindInterval6:
		return "type ipv6_addr; flags interval;"
	case kindPorts4:
		return "type ipv4_addr . inet_proto . inet_service;"
	case kindPorts6:
		return "type ipv6_addr . inet_proto . inet_service;"
	case kindVmap4:
		return "type ipv4_addr : verdict;"
	}
	return "type ipv6_addr : verdict;"
}
