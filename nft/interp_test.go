package nft

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// This file is a small interpreter of our own table, for tests: it runs a
// packet through the netlink expressions and set elements exactly as the
// Enforcer hands them to the kernel (ruleSpec.exprs, kernelElements), with
// the kernel's register layout, so the compiled table can be held against
// the reference evaluator on many random clusters without a kernel. It
// knows the expressions our compiler emits and fails on any other, so a new
// kind of match cannot slip past it.

// kernelTable is a Ruleset in the form the kernel receives it.
type kernelTable struct {
	chains map[string]*kernelChain
	sets   map[string]*kernelSet
	// rulesRun and lookups count what packets cost: the rules evaluated
	// and the set lookups done.
	rulesRun, lookups int
}

type kernelChain struct {
	name  string
	hook  string
	prio  int32
	rules []kernelRule
}

type kernelRule struct {
	exprs []expr.Any
	text  string // the rule in nft syntax, for traces
}

type kernelSet struct {
	keyLen   int
	interval bool
	// elems are sorted by key; an interval set holds start and end
	// elements, as the kernel does.
	elems []nftables.SetElement
}

func keyLen(k setKind) int {
	switch k {
	case kindAddr4, kindInterval4, kindVmap4:
		return 4
	case kindAddr6, kindInterval6, kindVmap6:
		return 16
	case kindIntervalVmap4:
		return 4
	case kindIntervalVmap6:
		return 16
	case kindPorts4, kindPortsVmap4:
		return 12
	case kindPorts6, kindPortsVmap6:
		return 24
	case kindServices:
		return 8
	}
	return 0
}

func toKernel(rs *Ruleset) *kernelTable {
	kt := &kernelTable{chains: map[string]*kernelChain{}, sets: map[string]*kernelSet{}}
	for name, c := range rs.chains {
		kc := &kernelChain{name: name, hook: string(c.hook), prio: c.prio}
		for i := range c.rules {
			kc.rules = append(kc.rules, kernelRule{exprs: c.rules[i].exprs(nil), text: c.rules[i].String()})
		}
		kt.chains[name] = kc
	}
	for name, s := range rs.sets {
		ks := &kernelSet{keyLen: keyLen(s.kind), interval: s.kind.interval()}
		for key := range s.elems.all() {
			ks.elems = append(ks.elems, s.kernelElements(key)...)
		}
		// An end sorts before a start of the same key: two adjacent
		// intervals of a map (different verdicts) meet there.
		sort.Slice(ks.elems, func(i, j int) bool {
			if c := bytes.Compare(ks.elems[i].Key, ks.elems[j].Key); c != 0 {
				return c < 0
			}
			return ks.elems[i].IntervalEnd && !ks.elems[j].IntervalEnd
		})
		kt.sets[name] = ks
	}
	return kt
}

// wirePacket is a packet as the expressions see it.
type wirePacket struct {
	nfproto   byte
	l4proto   byte
	network   []byte // the IP header
	transport []byte // the first bytes of the transport header
	ctState   uint32 // conntrack state bits (expr.CtStateBit*)
}

// newWirePacket lays out the first packet of p's connection: an IPv4 or
// IPv6 header with its addresses and a transport header with its ports.
func newWirePacket(p selectorstest.Packet) wirePacket {
	w := wirePacket{l4proto: byte(p.Protocol), ctState: expr.CtStateBitNEW}
	if p.Src.Is4() {
		w.nfproto = unix.NFPROTO_IPV4
		w.network = make([]byte, 20)
		w.network[0], w.network[9] = 0x45, byte(p.Protocol)
		copy(w.network[12:], p.Src.AsSlice())
		copy(w.network[16:], p.Dst.AsSlice())
	} else {
		w.nfproto = unix.NFPROTO_IPV6
		w.network = make([]byte, 40)
		w.network[0], w.network[6] = 0x60, byte(p.Protocol)
		copy(w.network[8:], p.Src.AsSlice())
		copy(w.network[24:], p.Dst.AsSlice())
	}
	w.transport = make([]byte, 8)
	binary.BigEndian.PutUint16(w.transport[0:], 40000)
	binary.BigEndian.PutUint16(w.transport[2:], p.Port)
	return w
}

// registers is the kernel's register file: NFT_REG_1..4 are 16 bytes each,
// NFT_REG32_00..15 the 4-byte words of the same memory.
type registers [64]byte

func regOffset(reg uint32) (int, error) {
	switch {
	case reg >= 1 && reg <= 4:
		return int(reg-1) * 16, nil
	case reg >= 8 && reg <= 23:
		return int(reg-8) * 4, nil
	}
	return 0, fmt.Errorf("register %d is no data register", reg)
}

// store writes data at reg, zero-padding the last 4-byte word as the
// kernel does.
func (r *registers) store(reg uint32, data []byte) error {
	off, err := regOffset(reg)
	if err != nil {
		return err
	}
	n := (len(data) + 3) / 4 * 4
	if off+n > len(r) {
		return fmt.Errorf("%d bytes do not fit at register %d", len(data), reg)
	}
	clear(r[off : off+n])
	copy(r[off:], data)
	return nil
}

func (r *registers) load(reg uint32, n int) ([]byte, error) {
	off, err := regOffset(reg)
	if err != nil {
		return nil, err
	}
	if off+n > len(r) {
		return nil, fmt.Errorf("%d bytes at register %d overflow", n, reg)
	}
	return r[off : off+n], nil
}

// outcome is how a chain ends.
type outcome uint8

const (
	fallThrough outcome = iota // end of chain: back to the caller, or the base chain's policy (accept)
	accepted
	dropped // drop or reject
	// gotoEnded: a goto target ended without a verdict, or a return; the
	// chain that went there ends too (goto pushes no return address).
	gotoEnded
)

// run decides w at one hook of the table: every base chain of the hook in
// priority order; a drop anywhere is final. trace collects the rules that
// matched.
func (kt *kernelTable) run(hook string, w wirePacket, trace *[]string) (bool, error) {
	var base []*kernelChain
	for _, c := range kt.chains {
		if c.hook == hook {
			base = append(base, c)
		}
	}
	sort.Slice(base, func(i, j int) bool { return base[i].prio < base[j].prio })
	for _, c := range base {
		out, err := kt.runChain(c, w, 0, trace)
		if err != nil {
			return false, err
		}
		if out == dropped {
			return false, nil
		}
	}
	return true, nil
}

func (kt *kernelTable) runChain(c *kernelChain, w wirePacket, depth int, trace *[]string) (outcome, error) {
	if depth > 16 {
		return 0, fmt.Errorf("jumps nest deeper than 16 at chain %s", c.name)
	}
	for _, rule := range c.rules {
		out, matched, err := kt.runRule(rule, w, depth, trace)
		if err != nil {
			return 0, fmt.Errorf("chain %s, rule %q: %w", c.name, rule.text, err)
		}
		if matched {
			*trace = append(*trace, c.name+": "+rule.text)
		}
		if out == gotoEnded {
			return fallThrough, nil
		}
		if out != fallThrough {
			return out, nil
		}
	}
	return fallThrough, nil
}

// runRule evaluates one rule: matched says whether all its matches held.
func (kt *kernelTable) runRule(rule kernelRule, w wirePacket, depth int, trace *[]string) (out outcome, matched bool, err error) {
	kt.rulesRun++
	var regs registers
	jump := func(chain string) (outcome, bool, error) {
		target := kt.chains[chain]
		if target == nil {
			return 0, true, fmt.Errorf("jump to missing chain %s", chain)
		}
		if target.hook != "" {
			return 0, true, fmt.Errorf("jump to base chain %s", chain)
		}
		out, err := kt.runChain(target, w, depth+1, trace)
		return out, true, err
	}
	for _, e := range rule.exprs {
		switch e := e.(type) {
		case *expr.Meta:
			var v byte
			switch e.Key {
			case expr.MetaKeyNFPROTO:
				v = w.nfproto
			case expr.MetaKeyL4PROTO:
				v = w.l4proto
			default:
				return 0, false, fmt.Errorf("meta key %d not interpreted", e.Key)
			}
			if err := regs.store(e.Register, []byte{v}); err != nil {
				return 0, false, err
			}
		case *expr.Ct:
			if e.Key != expr.CtKeySTATE {
				return 0, false, fmt.Errorf("ct key %d not interpreted", e.Key)
			}
			if err := regs.store(e.Register, binaryutil.NativeEndian.PutUint32(w.ctState)); err != nil {
				return 0, false, err
			}
		case *expr.Payload:
			var hdr []byte
			switch e.Base {
			case expr.PayloadBaseNetworkHeader:
				hdr = w.network
			case expr.PayloadBaseTransportHeader:
				hdr = w.transport
			default:
				return 0, false, fmt.Errorf("payload base %d not interpreted", e.Base)
			}
			if int(e.Offset+e.Len) > len(hdr) {
				return 0, false, fmt.Errorf("payload %d+%d beyond the header", e.Offset, e.Len)
			}
			if err := regs.store(e.DestRegister, hdr[e.Offset:e.Offset+e.Len]); err != nil {
				return 0, false, err
			}
		case *expr.Bitwise:
			src, err := regs.load(e.SourceRegister, int(e.Len))
			if err != nil {
				return 0, false, err
			}
			v := make([]byte, e.Len)
			for i := range v {
				v[i] = src[i]&e.Mask[i] ^ e.Xor[i]
			}
			if err := regs.store(e.DestRegister, v); err != nil {
				return 0, false, err
			}
		case *expr.Cmp:
			v, err := regs.load(e.Register, len(e.Data))
			if err != nil {
				return 0, false, err
			}
			eq := bytes.Equal(v, e.Data)
			switch e.Op {
			case expr.CmpOpEq:
				if !eq {
					return fallThrough, false, nil
				}
			case expr.CmpOpNeq:
				if eq {
					return fallThrough, false, nil
				}
			case expr.CmpOpGte, expr.CmpOpLte:
				// The kernel compares the register bytes with memcmp:
				// big-endian data (ports) compares as numbers.
				c := bytes.Compare(v, e.Data)
				if (e.Op == expr.CmpOpGte && c < 0) || (e.Op == expr.CmpOpLte && c > 0) {
					return fallThrough, false, nil
				}
			default:
				return 0, false, fmt.Errorf("cmp op %d not interpreted", e.Op)
			}
		case *expr.Range:
			v, err := regs.load(e.Register, len(e.FromData))
			if err != nil {
				return 0, false, err
			}
			in := bytes.Compare(v, e.FromData) >= 0 && bytes.Compare(v, e.ToData) <= 0
			if e.Op != expr.CmpOpEq {
				return 0, false, fmt.Errorf("range op %d not interpreted", e.Op)
			}
			if !in {
				return fallThrough, false, nil
			}
		case *expr.Lookup:
			s := kt.sets[e.SetName]
			kt.lookups++
			if s == nil {
				return 0, false, fmt.Errorf("lookup in missing set %s", e.SetName)
			}
			key, err := regs.load(e.SourceRegister, s.keyLen)
			if err != nil {
				return 0, false, err
			}
			elem, found := s.find(key)
			if e.Invert {
				found = !found
			}
			if !found {
				return fallThrough, false, nil
			}
			if e.IsDestRegSet {
				if e.DestRegister != 0 || elem.VerdictData == nil {
					return 0, false, fmt.Errorf("lookup into register %d not interpreted", e.DestRegister)
				}
				switch elem.VerdictData.Kind {
				case expr.VerdictJump:
					return jump(elem.VerdictData.Chain)
				case expr.VerdictAccept:
					return accepted, true, nil
				case expr.VerdictDrop:
					return dropped, true, nil
				}
				return 0, false, fmt.Errorf("map verdict %d not interpreted", elem.VerdictData.Kind)
			}
		case *expr.Counter, *expr.Log:
			// Side effects only.
		case *expr.Limit:
			// The rate limit on the log of denied packets: the packets of
			// a test are taken to stay under it.
		case *expr.Reject:
			return dropped, true, nil
		case *expr.Verdict:
			switch e.Kind {
			case expr.VerdictAccept:
				return accepted, true, nil
			case expr.VerdictDrop:
				return dropped, true, nil
			case expr.VerdictJump:
				return jump(e.Chain)
			case expr.VerdictGoto:
				out, matched, err := jump(e.Chain)
				if out == fallThrough {
					out = gotoEnded
				}
				return out, matched, err
			case expr.VerdictReturn:
				return gotoEnded, true, nil
			}
			return 0, false, fmt.Errorf("verdict %d not interpreted", e.Kind)
		default:
			return 0, false, fmt.Errorf("expression %T not interpreted", e)
		}
	}
	return fallThrough, true, nil
}

// find looks key up: an exact element, or for an interval set the interval
// whose start is the greatest element not above key, unless that is an end.
func (s *kernelSet) find(key []byte) (nftables.SetElement, bool) {
	i := sort.Search(len(s.elems), func(i int) bool { return bytes.Compare(s.elems[i].Key, key) > 0 })
	if s.interval {
		if i == 0 || s.elems[i-1].IntervalEnd {
			return nftables.SetElement{}, false
		}
		return s.elems[i-1], true
	}
	if i > 0 && bytes.Equal(s.elems[i-1].Key, key) {
		return s.elems[i-1], true
	}
	return nftables.SetElement{}, false
}

// describeTrace formats the rules a packet matched.
func describeTrace(trace []string) string {
	if len(trace) == 0 {
		return "  (no rule matched)"
	}
	return "  " + strings.Join(trace, "\n  ")
}

// ndPacket is an ICMPv6 neighbour solicitation from src to dst.
func ndPacket(src, dst netip.Addr) wirePacket {
	w := newWirePacket(selectorstest.Packet{Src: src, Dst: dst})
	w.l4proto = unix.IPPROTO_ICMPV6
	w.network[6] = unix.IPPROTO_ICMPV6
	w.transport = []byte{ndNeighborSolicit, 0, 0, 0, 0, 0, 0, 0}
	return w
}
