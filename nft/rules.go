package nft

import (
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/selectors"
)

// addrField is which address a match reads.
type addrField uint8

const (
	fieldNone addrField = iota
	fieldSaddr
	fieldDaddr
)

type verdictKind uint8

const (
	verdictNone verdictKind = iota
	verdictAccept
	verdictDrop
	verdictJump
	verdictGoto        // to a chain that ends in a final verdict or returns to the base chain
	verdictRejectTCP   // tcp reset
	verdictRejectICMPX // icmpx admin-prohibited
	verdictReturn      // back to the rule after the last jump
)

// ruleSpec is one rule in a form that can be compared (so a diff can tell
// whether a chain changed) and turned into netlink expressions or text.
// Matches apply in field order; every set field is optional.
type ruleSpec struct {
	family        int // 4 or 6: meta nfproto; 0: both
	ctEstablished bool
	l4proto       selectors.Protocol
	// icmpv6Type matches ICMPv6 messages of one type (neighbour discovery).
	icmpv6Type uint8
	setOn      addrField
	set        string
	// notSet: the same address is in no element of this set (an
	// inverted lookup).
	notSet string
	// notLocal: fib on this address says it is not local to the node.
	notLocal addrField
	// portFirst..portLast on th dport, when portLast > 0.
	portFirst, portLast uint16
	// serviceSet: (l4proto . th dport) lookup, the single ports of a
	// rule that has several (a set of kindServices).
	serviceSet string
	// portSet: (daddr . l4proto . th dport) lookup.
	portSet string
	vmapOn  addrField
	vmap    string
	// vmapPorts keys the verdict map by (address . l4proto . th dport),
	// the address read from vmapOn: an isolation group's lookup map.
	vmapPorts bool
	// limitRate (packets per second) and logGroup/logPrefix: a rate
	// limited NFLOG of the packet, on the deny path.
	limitRate uint32
	logGroup  uint16
	logPrefix string
	counter   bool
	verdict   verdictKind
	target    string // jump or goto target
	comment   string
	// foreign describes, in the expressions' own terms, a rule read back
	// from the kernel that nftpol does not write; such a rule never equals
	// a compiled one. Compiled rules leave it empty.
	foreign string
}

// Register numbers: NFT_REG_1 is the first 16-byte register; NFT_REG32_xx
// are its 4-byte parts, used to lay out concatenations.
const (
	reg1    = 1
	reg32_0 = 8
)

// reg32 is the number of the idx-th 4-byte register as the kernel reports
// it: the kernel keeps registers as 4-byte offsets and dumps one that
// starts a 16-byte register by that register's number (NFT_REG32_04 reads
// back as NFT_REG_2). Writing that form makes what we send and what we
// read back the same expressions.
func reg32(idx uint32) uint32 {
	if idx%4 == 0 {
		return reg1 + idx/4
	}
	return reg32_0 + idx
}

func addrOffset(family int, f addrField) (offset, length uint32) {
	if family == 4 {
		if f == fieldSaddr {
			return 12, 4
		}
		return 16, 4
	}
	if f == fieldSaddr {
		return 8, 16
	}
	return 24, 16
}

func nfproto(family int) byte {
	if family == 6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

func loadAddr(family int, f addrField, reg uint32) *expr.Payload {
	off, n := addrOffset(family, f)
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}
}

// exprs returns the netlink expressions of a rule. setIDs gives the IDs of
// sets created in the same batch (a lookup must name them by ID too).
func (r *ruleSpec) exprs(setIDs map[string]uint32) []expr.Any {
	var e []expr.Any
	if r.family != 0 {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{nfproto(r.family)}})
	}
	if r.ctEstablished {
		e = append(e,
			&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED),
				Xor:  binaryutil.NativeEndian.PutUint32(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: []byte{0, 0, 0, 0}})
	}
	if r.set != "" {
		e = append(e, loadAddr(r.family, r.setOn, reg1),
			&expr.Lookup{SourceRegister: reg1, SetName: r.set, SetID: setIDs[r.set]})
	}
	if r.notSet != "" {
		e = append(e, loadAddr(r.family, r.setOn, reg1),
			&expr.Lookup{SourceRegister: reg1, SetName: r.notSet, SetID: setIDs[r.notSet], Invert: true})
	}
	if r.notLocal != fieldNone {
		e = append(e,
			&expr.Fib{Register: reg1, ResultADDRTYPE: true, FlagSADDR: r.notLocal == fieldSaddr, FlagDADDR: r.notLocal == fieldDaddr},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)})
	}
	if r.l4proto != 0 {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{byte(r.l4proto)}})
	}
	if r.icmpv6Type != 0 {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_ICMPV6}},
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{r.icmpv6Type}})
	}
	if r.portLast > 0 {
		e = append(e, &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
		if r.portFirst == r.portLast {
			e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: be16(r.portFirst)})
		} else {
			// Two comparisons, as the nft tool writes "dport 1000-2000",
			// so that a table loaded from NftText is the same table.
			e = append(e,
				&expr.Cmp{Op: expr.CmpOpGte, Register: reg1, Data: be16(r.portFirst)},
				&expr.Cmp{Op: expr.CmpOpLte, Register: reg1, Data: be16(r.portLast)})
		}
	}
	if r.serviceSet != "" {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(0)},
			&expr.Payload{DestRegister: reg32(1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Lookup{SourceRegister: reg1, SetName: r.serviceSet, SetID: setIDs[r.serviceSet]})
	}
	if r.portSet != "" {
		e = append(loadAddrPort(e, r.family, fieldDaddr),
			&expr.Lookup{SourceRegister: reg1, SetName: r.portSet, SetID: setIDs[r.portSet]})
	}
	if r.vmap != "" {
		if r.vmapPorts {
			e = loadAddrPort(e, r.family, r.vmapOn)
		} else {
			e = append(e, loadAddr(r.family, r.vmapOn, reg1))
		}
		e = append(e, &expr.Lookup{SourceRegister: reg1, DestRegister: 0, IsDestRegSet: true, SetName: r.vmap, SetID: setIDs[r.vmap]})
	}
	if r.limitRate > 0 {
		e = append(e, &expr.Limit{Type: expr.LimitTypePkts, Rate: uint64(r.limitRate), Unit: expr.LimitTimeSecond, Burst: r.limitRate})
	}
	if r.logPrefix != "" {
		e = append(e, &expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_PREFIX, Group: r.logGroup, Data: []byte(r.logPrefix)})
	}
	if r.counter {
		e = append(e, &expr.Counter{})
	}
	switch r.verdict {
	case verdictAccept:
		e = append(e, &expr.Verdict{Kind: expr.VerdictAccept})
	case verdictDrop:
		e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
	case verdictJump:
		e = append(e, &expr.Verdict{Kind: expr.VerdictJump, Chain: r.target})
	case verdictGoto:
		e = append(e, &expr.Verdict{Kind: expr.VerdictGoto, Chain: r.target})
	case verdictReturn:
		e = append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	case verdictRejectTCP:
		e = append(e, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST, Code: 0})
	case verdictRejectICMPX:
		e = append(e, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_ADMIN_PROHIBITED})
	}
	return e
}

// loadAddrPort appends the loads of (address . l4proto . th dport), laid
// out in consecutive 4-byte registers from NFT_REG_1 as the nft tool lays
// out a concatenation.
func loadAddrPort(e []expr.Any, family int, f addrField) []expr.Any {
	off, addrLen := addrOffset(family, f)
	next := addrLen / 4
	return append(e,
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: addrLen},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg32(next)},
		&expr.Payload{DestRegister: reg32(next + 1), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
}

func be16(v uint16) []byte {
	b := make([]byte, 2)
	binary.BigEndian.PutUint16(b, v)
	return b
}

// String renders the rule in nft syntax, as `nft list` would show it.
func (r *ruleSpec) String() string {
	if r.foreign != "" {
		s := "# not written by nftpol: " + r.foreign
		if r.comment != "" {
			s += fmt.Sprintf(" comment %q", r.comment)
		}
		return s
	}
	var parts []string
	ipKw := func() string {
		if r.family == 6 {
			return "ip6"
		}
		return "ip"
	}
	field := func(f addrField) string {
		if f == fieldSaddr {
			return "saddr"
		}
		return "daddr"
	}
	if r.family != 0 && r.set == "" && r.portSet == "" && r.vmap == "" {
		parts = append(parts, "meta nfproto ipv"+fmt.Sprint(r.family))
	}
	if r.ctEstablished {
		parts = append(parts, "ct state established,related")
	}
	if r.icmpv6Type != 0 {
		parts = append(parts, fmt.Sprintf("icmpv6 type %d", r.icmpv6Type))
	}
	if r.set != "" {
		parts = append(parts, fmt.Sprintf("%s %s @%s", ipKw(), field(r.setOn), r.set))
	}
	if r.notSet != "" {
		parts = append(parts, fmt.Sprintf("%s %s != @%s", ipKw(), field(r.setOn), r.notSet))
	}
	if r.notLocal != fieldNone {
		parts = append(parts, fmt.Sprintf("fib %s type != local", field(r.notLocal)))
	}
	// Like nft: "tcp dport 80" when the protocol is known, "th dport"
	// otherwise, and "meta l4proto udp" for a protocol without ports.
	proto := strings.ToLower(r.l4proto.String())
	switch {
	case r.portLast > 0 && r.portFirst == r.portLast:
		parts = append(parts, fmt.Sprintf("%s dport %d", portKw(proto, r.l4proto), r.portFirst))
	case r.portLast > 0:
		parts = append(parts, fmt.Sprintf("%s dport %d-%d", portKw(proto, r.l4proto), r.portFirst, r.portLast))
	case r.l4proto != 0:
		parts = append(parts, "meta l4proto "+proto)
	}
	if r.serviceSet != "" {
		parts = append(parts, "meta l4proto . th dport @"+r.serviceSet)
	}
	if r.portSet != "" {
		parts = append(parts, fmt.Sprintf("%s daddr . meta l4proto . th dport @%s", ipKw(), r.portSet))
	}
	if r.vmap != "" {
		key := fmt.Sprintf("%s %s", ipKw(), field(r.vmapOn))
		if r.vmapPorts {
			key += " . meta l4proto . th dport"
		}
		parts = append(parts, fmt.Sprintf("%s vmap @%s", key, r.vmap))
	}
	if r.limitRate > 0 {
		parts = append(parts, fmt.Sprintf("limit rate %d/second burst %d packets", r.limitRate, r.limitRate))
	}
	if r.logPrefix != "" {
		parts = append(parts, fmt.Sprintf("log prefix %q group %d", r.logPrefix, r.logGroup))
	}
	if r.counter {
		parts = append(parts, "counter")
	}
	switch r.verdict {
	case verdictAccept:
		parts = append(parts, "accept")
	case verdictDrop:
		parts = append(parts, "drop")
	case verdictJump:
		parts = append(parts, "jump "+r.target)
	case verdictGoto:
		parts = append(parts, "goto "+r.target)
	case verdictReturn:
		parts = append(parts, "return")
	case verdictRejectTCP:
		parts = append(parts, "reject with tcp reset")
	case verdictRejectICMPX:
		parts = append(parts, "reject with icmpx admin-prohibited")
	}
	if r.comment != "" {
		parts = append(parts, fmt.Sprintf("comment %q", r.comment))
	}
	return strings.Join(parts, " ")
}

// commentUserData encodes a rule comment the way the nft tool stores it, so
// `nft list` shows it as `comment "..."`.
func commentUserData(comment string) []byte {
	return userdata.AppendString(nil, userdata.TypeComment, comment)
}

func portKw(name string, p selectors.Protocol) string {
	if p == 0 {
		return "th"
	}
	return name
}

// decodeRule is the exact inverse of ruleSpec.exprs: it recognizes the
// expressions of a rule nftpol writes and returns that rule, and it
// returns a foreign rule for anything else. Exactness comes from checking
// the result: re-encoded, it must give the very expressions read back
// (every operator, register, offset, length, mask, flag and datum), so a
// field the recognizer does not look at can still not pass unnoticed.
// unknown lists expressions the reader could not decode at all.
func decodeRule(exprs []expr.Any, unknown []string) ruleSpec {
	foreign := func() ruleSpec {
		return ruleSpec{foreign: describeExprs(exprs, unknown)}
	}
	if len(unknown) > 0 {
		return foreign()
	}
	r, ok := recognizeRule(exprs)
	if !ok || !sameExprs(r.exprs(nil), exprs) {
		return foreign()
	}
	return r
}

// recognizeRule reads the fields of a rule from the expression patterns
// ruleSpec.exprs writes. It is lenient (operators and lengths are checked
// by decodeRule's re-encoding) but never indexes past what it checked.
func recognizeRule(exprs []expr.Any) (ruleSpec, bool) {
	var r ruleSpec
	at := func(i int) expr.Any {
		if i < len(exprs) {
			return exprs[i]
		}
		return nil
	}
	cmpByte := func(i int) (byte, bool) {
		c, ok := at(i).(*expr.Cmp)
		if !ok || len(c.Data) != 1 {
			return 0, false
		}
		return c.Data[0], true
	}
	port := func(b []byte) (uint16, bool) {
		if len(b) != 2 {
			return 0, false
		}
		return uint16(b[0])<<8 | uint16(b[1]), true
	}
	for i := 0; i < len(exprs); i++ {
		switch x := exprs[i].(type) {
		case *expr.Meta:
			if l, ok := at(i + 2).(*expr.Lookup); ok && x.Key == expr.MetaKeyL4PROTO {
				// l4proto . dport
				if _, ok := at(i + 1).(*expr.Payload); !ok {
					return r, false
				}
				r.serviceSet = l.SetName
				i += 2
				continue
			}
			v, ok := cmpByte(i + 1)
			if !ok {
				return r, false
			}
			switch {
			case x.Key == expr.MetaKeyNFPROTO:
				r.family = 4
				if v == unix.NFPROTO_IPV6 {
					r.family = 6
				}
				i++
			case x.Key == expr.MetaKeyL4PROTO && v == unix.IPPROTO_ICMPV6:
				if _, ok := at(i + 2).(*expr.Payload); !ok {
					return r, false
				}
				t, ok := cmpByte(i + 3)
				if !ok {
					return r, false
				}
				r.icmpv6Type = t
				i += 3
			case x.Key == expr.MetaKeyL4PROTO:
				r.l4proto = selectors.Protocol(v)
				i++
			default:
				return r, false
			}
		case *expr.Ct:
			if _, ok := at(i + 1).(*expr.Bitwise); !ok {
				return r, false
			}
			if _, ok := at(i + 2).(*expr.Cmp); !ok {
				return r, false
			}
			r.ctEstablished = true
			i += 2
		case *expr.Payload:
			if x.Base == expr.PayloadBaseTransportHeader {
				var ok bool
				m, ok := at(i + 1).(*expr.Cmp)
				if ok {
					r.portFirst, ok = port(m.Data)
					r.portLast = r.portFirst
					i++
				}
				if hi, isCmp := at(i + 1).(*expr.Cmp); ok && isCmp && m.Op == expr.CmpOpGte {
					r.portLast, ok = port(hi.Data)
					i++
				}
				if !ok || r.portLast == 0 {
					return r, false
				}
				continue
			}
			field := fieldDaddr
			if (x.Len == 4 && x.Offset == 12) || (x.Len == 16 && x.Offset == 8) {
				field = fieldSaddr
			}
			switch m := at(i + 1).(type) {
			case *expr.Lookup:
				switch {
				case m.IsDestRegSet:
					r.vmapOn, r.vmap = field, m.SetName
				case m.Invert:
					r.setOn, r.notSet = field, m.SetName
				default:
					r.setOn, r.set = field, m.SetName
				}
				i++
			case *expr.Meta:
				// daddr . l4proto . dport
				if _, ok := at(i + 2).(*expr.Payload); !ok {
					return r, false
				}
				l, ok := at(i + 3).(*expr.Lookup)
				if !ok {
					return r, false
				}
				if l.IsDestRegSet {
					r.vmapOn, r.vmap, r.vmapPorts = field, l.SetName, true
				} else {
					r.portSet = l.SetName
				}
				i += 3
			default:
				return r, false
			}
		case *expr.Fib:
			if _, ok := at(i + 1).(*expr.Cmp); !ok {
				return r, false
			}
			r.notLocal = fieldDaddr
			if x.FlagSADDR {
				r.notLocal = fieldSaddr
			}
			i++
		case *expr.Counter:
			r.counter = true
		case *expr.Limit:
			if x.Rate > 1<<32-1 {
				return r, false
			}
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
			case expr.VerdictGoto:
				r.verdict, r.target = verdictGoto, x.Chain
			case expr.VerdictReturn:
				r.verdict = verdictReturn
			default:
				return r, false
			}
		case *expr.Reject:
			r.verdict = verdictRejectICMPX
			if x.Type == unix.NFT_REJECT_TCP_RST {
				r.verdict = verdictRejectTCP
			}
		default:
			return r, false
		}
	}
	return r, true
}

// sameExprs compares expressions as the kernel holds them: counter values
// and the transaction-local set IDs are state, not rule.
func sameExprs(a, b []expr.Any) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := canonical(a[i]), canonical(b[i])
		if !reflect.DeepEqual(x, y) {
			return false
		}
	}
	return true
}

func canonical(e expr.Any) expr.Any {
	switch x := e.(type) {
	case *expr.Counter:
		return &expr.Counter{}
	case *expr.Lookup:
		c := *x
		c.SetID = 0
		return &c
	}
	return e
}

// describeExprs renders expressions nftpol does not recognize, for drift
// messages and `nftpol dump`: each by its type and fields.
func describeExprs(exprs []expr.Any, unknown []string) string {
	parts := make([]string, 0, len(exprs)+len(unknown))
	for _, e := range exprs {
		name := strings.ToLower(strings.TrimPrefix(fmt.Sprintf("%T", e), "*expr."))
		parts = append(parts, fmt.Sprintf("%s%+v", name, canonical(e)))
	}
	for _, u := range unknown {
		parts = append(parts, "unsupported expression "+u)
	}
	return strings.Join(parts, " ")
}
