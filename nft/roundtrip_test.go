package nft

import (
	"bytes"
	"maps"
	"math/rand"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// randomRulesets compiles random models under every configuration, plus
// the fixed models that hold every kind of object.
func randomRulesets(n int) []*Ruleset {
	cfgs := []Config{{}, {Deny: DenyReject}, {LogDenied: true, LogGroup: 9, LogRate: 3}, {Deny: DenyReject, LogDenied: true},
		{LookupMinPolicies: 1}, {Deny: DenyReject, LookupMinPolicies: 1}}
	var out []*Ruleset
	for _, cfg := range cfgs {
		out = append(out, Compile(everyKindModel(), cfg), Compile(largeIPv6Model(20, 50, 10, 10), cfg),
			Compile(withPodGuard(everyKindModel()), cfg))
	}
	r := rand.New(rand.NewSource(7))
	for i := 0; i < n; i++ {
		out = append(out, Compile(randomModel(r), cfgs[i%len(cfgs)]))
	}
	return out
}

// TestEveryEncodingHasItsExactInverse: decode(encode(x)) == x for every
// rule, set kind, element and chain the compiler emits, over random
// clusters. Verification relies on it: an encoding without an exact
// inverse would read back as drift forever, or hide drift.
func TestEveryEncodingHasItsExactInverse(t *testing.T) {
	for i, rs := range randomRulesets(200) {
		for _, c := range rs.chains {
			for _, r := range c.rules {
				want := r
				want.comment = ""
				if got := decodeRule(r.exprs(nil), nil); got != want {
					t.Fatalf("ruleset %d chain %s: %s decodes as %s", i, c.name, want.String(), got.String())
				}
			}
			back := chainFromKernel(toKernelChain(&nftables.Table{Name: rs.Table}, c))
			if back.hook != c.hook || back.prio != c.prio || back.typ != c.typ || back.policy != c.policy {
				t.Fatalf("chain %s reads back as %+v", c.name, back)
			}
		}
		for _, s := range rs.sets {
			if got := kindOf(s.kind.shape()); got != s.kind {
				t.Fatalf("set %s: kind %v reads back as %v", s.name, s.kind, got)
			}
			var kernel []nftables.SetElement
			for k := range s.elems.all() {
				for _, el := range s.kernelElements(k) {
					if el.VerdictData != nil {
						// The kernel returns a verdict as raw attributes.
						el.Val = verdictAttrs(el.VerdictData.Chain)
						el.VerdictData = nil
					}
					kernel = append(kernel, el)
				}
			}
			// The kernel dumps elements in an order of its own.
			rand.New(rand.NewSource(int64(i))).Shuffle(len(kernel), func(a, b int) { kernel[a], kernel[b] = kernel[b], kernel[a] })
			if got := elemsFromKernel(s.kind, kernel); !maps.Equal(got, maps.Collect(s.elems.all())) {
				t.Fatalf("set %s: %d elements read back as %d different ones", s.name, s.elems.len(), len(got))
			}
		}
	}
}

// verdictAttrs is a jump verdict as the kernel dumps it.
func verdictAttrs(chain string) []byte {
	var b []byte
	code := int32(unix.NFT_JUMP)
	b = appendAttr(b, unix.NFTA_VERDICT_CODE, []byte{byte(code >> 24), byte(code >> 16), byte(code >> 8), byte(code)})
	return appendAttr(b, unix.NFTA_VERDICT_CHAIN, append([]byte(chain), 0))
}

func appendAttr(b []byte, typ uint16, data []byte) []byte {
	n := 4 + len(data)
	b = append(b, byte(n), byte(n>>8), byte(typ), byte(typ>>8))
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// TestTamperedExpressionsAreNeverOurs changes one field of the
// expressions of real rules, as someone editing our table would, and
// checks the rule no longer decodes as the committed one: each is the
// tampering the issue names, at the level of the expressions.
func TestTamperedExpressionsAreNeverOurs(t *testing.T) {
	// Both layouts of the isolation chains: jumps, and lookup maps.
	var chains []*chainSpec
	for _, lookupMin := range []int{0, 1} {
		rs := Compile(withPodGuard(everyKindModel()), Config{Deny: DenyReject, LogDenied: true, LookupMinPolicies: lookupMin})
		for _, c := range rs.chains {
			chains = append(chains, c)
		}
	}
	mutations := []struct {
		name  string
		apply func(e expr.Any) bool // reports whether it changed e
	}{
		{"cmp operator", func(e expr.Any) bool {
			if c, ok := e.(*expr.Cmp); ok {
				c.Op = expr.CmpOpNeq ^ c.Op&1
				return true
			}
			return false
		}},
		{"cmp datum", func(e expr.Any) bool {
			if c, ok := e.(*expr.Cmp); ok && len(c.Data) > 0 {
				c.Data = bytes.Clone(c.Data)
				c.Data[len(c.Data)-1]++
				return true
			}
			return false
		}},
		{"ct state mask widened to new", func(e expr.Any) bool {
			if b, ok := e.(*expr.Bitwise); ok {
				b.Mask = bytes.Clone(b.Mask)
				b.Mask[0] |= byte(expr.CtStateBitNEW)
				return true
			}
			return false
		}},
		{"lookup inverted", func(e expr.Any) bool {
			if l, ok := e.(*expr.Lookup); ok && !l.IsDestRegSet {
				l.Invert = !l.Invert
				return true
			}
			return false
		}},
		{"lookup of another set", func(e expr.Any) bool {
			if l, ok := e.(*expr.Lookup); ok {
				l.SetName += "x"
				return true
			}
			return false
		}},
		{"sport for dport", func(e expr.Any) bool {
			if p, ok := e.(*expr.Payload); ok && p.Base == expr.PayloadBaseTransportHeader && p.Offset == 2 {
				p.Offset = 0
				return true
			}
			return false
		}},
		{"saddr for daddr", func(e expr.Any) bool {
			if p, ok := e.(*expr.Payload); ok && p.Base == expr.PayloadBaseNetworkHeader {
				p.Offset -= p.Len
				return true
			}
			return false
		}},
		{"payload base", func(e expr.Any) bool {
			if p, ok := e.(*expr.Payload); ok {
				p.Base = expr.PayloadBaseLLHeader
				return true
			}
			return false
		}},
		{"register", func(e expr.Any) bool {
			if m, ok := e.(*expr.Meta); ok {
				m.Register++
				return true
			}
			return false
		}},
		{"meta key", func(e expr.Any) bool {
			if m, ok := e.(*expr.Meta); ok {
				m.Key = expr.MetaKeyMARK
				return true
			}
			return false
		}},
		{"jump to another chain", func(e expr.Any) bool {
			if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictJump {
				v.Chain += "x"
				return true
			}
			return false
		}},
		{"goto for jump", func(e expr.Any) bool {
			if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictJump {
				v.Kind = expr.VerdictGoto
				return true
			}
			return false
		}},
		{"drop for accept", func(e expr.Any) bool {
			if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictAccept {
				v.Kind = expr.VerdictDrop
				return true
			}
			return false
		}},
		{"fib of the other address", func(e expr.Any) bool {
			if f, ok := e.(*expr.Fib); ok {
				f.FlagSADDR, f.FlagDADDR = f.FlagDADDR, f.FlagSADDR
				return true
			}
			return false
		}},
		{"fib result", func(e expr.Any) bool {
			if f, ok := e.(*expr.Fib); ok {
				f.ResultADDRTYPE, f.ResultOIF = false, true
				return true
			}
			return false
		}},
		{"reject type", func(e expr.Any) bool {
			if r, ok := e.(*expr.Reject); ok {
				r.Code++
				return true
			}
			return false
		}},
		{"limit rate", func(e expr.Any) bool {
			if l, ok := e.(*expr.Limit); ok {
				l.Rate *= 1000
				return true
			}
			return false
		}},
		{"log group", func(e expr.Any) bool {
			if l, ok := e.(*expr.Log); ok {
				l.Group++
				return true
			}
			return false
		}},
	}
	for _, m := range mutations {
		t.Run(m.name, func(t *testing.T) {
			tried := 0
			for _, c := range chains {
				for _, r := range c.rules {
					exprs := r.exprs(nil)
					for i := range exprs {
						mutated := r.exprs(nil)
						if !m.apply(mutated[i]) {
							continue
						}
						tried++
						want := r
						want.comment = ""
						if got := decodeRule(mutated, nil); got == want {
							t.Fatalf("chain %s: %s with %s at expression %d still decodes as ours", c.name, r.String(), m.name, i)
						}
					}
				}
			}
			if tried == 0 {
				t.Fatalf("no rule of the table has an expression to apply %q to", m.name)
			}
		})
	}
	t.Run("expression removed, added or unknown", func(t *testing.T) {
		for _, c := range chains {
			for _, r := range c.rules {
				want := r
				want.comment = ""
				exprs := r.exprs(nil)
				for i := range exprs {
					fewer := append(append([]expr.Any{}, exprs[:i]...), exprs[i+1:]...)
					if got := decodeRule(fewer, nil); got == want {
						t.Fatalf("%s without expression %d decodes as ours", r.String(), i)
					}
				}
				more := append(r.exprs(nil), &expr.Counter{})
				if got := decodeRule(more, nil); got == want && !r.counter {
					t.Fatalf("%s with a counter more decodes as ours", r.String())
				}
				if got := decodeRule(exprs, []string{"socket"}); got == want || got.foreign == "" {
					t.Fatalf("%s with an unsupported expression decodes as %s", r.String(), got.String())
				}
			}
		}
	})
	t.Run("foreign rules render, never panic", func(t *testing.T) {
		for i, exprs := range [][]expr.Any{
			{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}},
			{&expr.Payload{Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}},
			{&expr.Payload{Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}, &expr.Cmp{Op: expr.CmpOpGte, Data: []byte{1}}},
			{&expr.Payload{Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}, &expr.Meta{}},
			{&expr.Ct{Key: expr.CtKeySTATE}},
			{&expr.Ct{Key: expr.CtKeySTATE}, &expr.Bitwise{}},
			{&expr.Meta{Key: expr.MetaKeyL4PROTO}, &expr.Cmp{Data: []byte{unix.IPPROTO_ICMPV6}}},
			{&expr.Limit{Rate: 1 << 40}},
			{&expr.Fib{ResultADDRTYPE: true}},
			{&expr.Immediate{Register: 1, Data: []byte{1}}, &expr.Verdict{Kind: expr.VerdictReturn}},
		} {
			r := decodeRule(exprs, nil)
			if r.foreign == "" || !strings.HasPrefix(r.String(), "# not written by nftpol: ") {
				t.Errorf("case %d decodes as %q, want a foreign rule", i, r.String())
			}
		}
	})
}
