package nft

import (
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// overlappingModel is one local pod isolated for ingress and egress by up
// to 10 policies whose rules overlap on purpose: a few peers from a small
// pool of addresses and ranges, a few ports, so that several policies and
// several lookup shapes allow the same packet. Some rules fit no lookup
// shape (every peer, port ranges, ipBlocks with ports) and cut segments.
func overlappingModel(r *rand.Rand) (*selectors.Model, []netip.Addr) {
	pool := []netip.Addr{}
	for i := 1; i <= 6; i++ {
		pool = append(pool, netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), netip.MustParseAddr(fmt.Sprintf("fd00:1::%d", i)))
	}
	m := &selectors.Model{}
	for i := 0; i < 5; i++ {
		s := selectors.AddrSet{ID: fmt.Sprintf("pods-%d", i), Description: "pods"}
		for _, a := range pool {
			if r.Intn(3) == 0 {
				s.Addrs = append(s.Addrs, a)
			}
		}
		slices.SortFunc(s.Addrs, netip.Addr.Compare)
		m.AddrSets = append(m.AddrSets, s)
	}
	for i := 0; i < 4; i++ {
		s := selectors.AddrSet{ID: fmt.Sprintf("block-%d", i), Description: "block"}
		lo, hi := 1+r.Intn(6), 1+r.Intn(6)
		if lo > hi {
			lo, hi = hi, lo
		}
		s.Ranges = []selectors.AddrRange{
			{First: netip.AddrFrom4([4]byte{10, 1, 0, byte(lo)}), Last: netip.AddrFrom4([4]byte{10, 1, 0, byte(hi)})},
			{First: netip.MustParseAddr(fmt.Sprintf("fd00:1::%d", lo)), Last: netip.MustParseAddr(fmt.Sprintf("fd00:1::%d", hi))},
		}
		m.AddrSets = append(m.AddrSets, s)
	}
	randomRule := func() selectors.Rule {
		var rule selectors.Rule
		switch r.Intn(8) {
		case 0:
			rule.Peers.All = true
		default:
			for _, s := range m.AddrSets {
				if r.Intn(4) == 0 {
					rule.Peers.Sets = append(rule.Peers.Sets, s.ID)
				}
			}
		}
		switch r.Intn(6) {
		case 0, 1:
			rule.Ports.All = true
		case 2:
			rule.Ports.Ranges = []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: 82}}
		default:
			for _, port := range []uint16{80, 81, 82} {
				for _, proto := range []selectors.Protocol{selectors.ProtocolTCP, selectors.ProtocolUDP} {
					if r.Intn(3) == 0 {
						rule.Ports.Ranges = append(rule.Ports.Ranges, selectors.PortRange{Protocol: proto, First: port, Last: port})
					}
				}
			}
			slices.SortFunc(rule.Ports.Ranges, func(a, b selectors.PortRange) int {
				return int(a.Protocol)*65536 + int(a.First) - int(b.Protocol)*65536 - int(b.First)
			})
		}
		return rule
	}
	var keys []string
	for p := 0; p < 2+r.Intn(9); p++ {
		pol := selectors.PolicyRules{Key: fmt.Sprintf("ns/p%02d", p)}
		for range 1 + r.Intn(3) {
			pol.Ingress = append(pol.Ingress, randomRule())
			pol.Egress = append(pol.Egress, randomRule())
		}
		m.Policies = append(m.Policies, pol)
		keys = append(keys, pol.Key)
	}
	m.Pods = []selectors.PodRules{{Key: "ns/local", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")},
		Ingress: keys, Egress: keys}}
	return m, pool
}

// TestLookupLayoutAcceptsLikeTheWalk: on pods that many overlapping
// policies isolate, the lookup layout lets through exactly what the walk
// of jumps lets through, and the policy rule that counts a packet is the
// same (the first that allows it, in policy and rule order), for every
// source or destination in the pool, protocol and port, both families.
func TestLookupLayoutAcceptsLikeTheWalk(t *testing.T) {
	r := rand.New(rand.NewSource(15))
	segments := 0
	for i := 0; i < 400; i++ {
		m, pool := overlappingModel(r)
		lookup := Compile(m, Config{LookupMinPolicies: 1})
		walk := toKernel(Compile(m, Config{LookupMinPolicies: 1 << 30}))
		for name := range lookup.sets {
			if strings.HasPrefix(name, "l-") {
				segments++
			}
		}
		kt := toKernel(lookup)
		local := m.Pods[0].IPs
		for _, peer := range append(pool, netip.MustParseAddr("10.1.0.9"), netip.MustParseAddr("fd00:1::9")) {
			l := local[0]
			if peer.Is6() {
				l = local[1]
			}
			for _, proto := range []selectors.Protocol{selectors.ProtocolTCP, selectors.ProtocolUDP} {
				for _, port := range []uint16{79, 80, 81, 82} {
					for _, pk := range []selectorstest.Packet{
						{Src: peer, Dst: l, Protocol: proto, Port: port}, // ingress
						{Src: l, Dst: peer, Protocol: proto, Port: port}, // egress
					} {
						var got, want []string
						okGot, err := kt.run("forward", newWirePacket(pk), &got)
						if err != nil {
							t.Fatal(err)
						}
						okWant, err := walk.run("forward", newWirePacket(pk), &want)
						if err != nil {
							t.Fatal(err)
						}
						if okGot != okWant || !slices.Equal(policyRulesOf(got), policyRulesOf(want)) {
							t.Fatalf("model %d, %s: lookup layout allowed=%v by\n%s\nwalk allowed=%v by\n%s\ntable:\n%s",
								i, pk, okGot, describeTrace(got), okWant, describeTrace(want), lookup.String())
						}
					}
				}
			}
		}
	}
	if segments < 400 {
		t.Fatalf("only %d lookup maps in 400 models: the test no longer exercises the layout", segments)
	}
}

// policyRulesOf keeps the rules of policy chains from a trace: the rules
// that counted and accepted the packet.
func policyRulesOf(trace []string) []string {
	var out []string
	for _, line := range trace {
		if strings.HasPrefix(line, "pol-") {
			out = append(out, line)
		}
	}
	return out
}

// pathModel is the packet-path benchmark's server node in miniature
// (test/packetpath_bench_test.go): n policies select the server; each
// allows a namespace on port 80 and pods by role on 80 and 5201, every
// fourth an ipBlock on every port; the last one alone allows the client.
func pathModel(n int) (*selectors.Model, selectorstest.Packet) {
	m := &selectors.Model{}
	addSet := func(id string, addrs ...netip.Addr) {
		m.AddrSets = append(m.AddrSets, selectors.AddrSet{ID: id, Description: id, Addrs: addrs})
	}
	for k := 0; k < 20; k++ {
		addSet(fmt.Sprintf("ns-other-%d", k), netip.AddrFrom4([4]byte{10, 2, byte(k), 1}), netip.MustParseAddr(fmt.Sprintf("fd00:2:%x::1", k)))
	}
	for k := 0; k < 13; k++ {
		addSet(fmt.Sprintf("role-r%d", k), netip.AddrFrom4([4]byte{10, 3, byte(k), 1}), netip.MustParseAddr(fmt.Sprintf("fd00:3:%x::1", k)))
	}
	client := netip.MustParseAddr("10.9.0.1")
	addSet("client", client, netip.MustParseAddr("fd00:9::1"))
	tcp := func(ports ...uint16) selectors.PortMatch {
		var pm selectors.PortMatch
		for _, p := range ports {
			pm.Ranges = append(pm.Ranges, selectors.PortRange{Protocol: selectors.ProtocolTCP, First: p, Last: p})
		}
		return pm
	}
	var keys []string
	for i := 0; i < n; i++ {
		p := selectors.PolicyRules{Key: fmt.Sprintf("srv/pol-%04d", i), HasIngress: true}
		if i == n-1 {
			p.Ingress = []selectors.Rule{{Peers: selectors.PeerMatch{Sets: []string{"client"}}, Ports: tcp(80, 5201)}}
		} else {
			p.Ingress = []selectors.Rule{
				{Peers: selectors.PeerMatch{Sets: []string{fmt.Sprintf("ns-other-%d", i%20)}}, Ports: tcp(80)},
				{Peers: selectors.PeerMatch{Sets: []string{fmt.Sprintf("role-r%d", i%13)}}, Ports: tcp(80, 5201)},
			}
			if i%4 == 0 {
				id := fmt.Sprintf("block-%d", i)
				m.AddrSets = append(m.AddrSets, selectors.AddrSet{ID: id, Description: id, Ranges: []selectors.AddrRange{
					{First: netip.AddrFrom4([4]byte{10, 251, byte(i % 250), 0}), Last: netip.AddrFrom4([4]byte{10, 251, byte(i % 250), 255})}}})
				p.Ingress = append(p.Ingress, selectors.Rule{Peers: selectors.PeerMatch{Sets: []string{id}}, Ports: selectors.PortMatch{All: true}})
			}
		}
		m.Policies = append(m.Policies, p)
		keys = append(keys, p.Key)
	}
	server := netip.MustParseAddr("10.0.0.1")
	m.Pods = []selectors.PodRules{{Key: "srv/server", IPs: []netip.Addr{server}, Ingress: keys}}
	return m, selectorstest.Packet{Src: client, Dst: server, Protocol: selectors.ProtocolTCP, Port: 5201}
}

// TestLookupCostDoesNotGrowWithPolicies: a new connection that the last
// of n policies allows evaluates as many rules and lookups with 10 or
// 1,000 policies in the lookup layout; in the walk it grows with n. The
// figures are logged (BENCHMARKS.md, "One lookup per packet").
func TestLookupCostDoesNotGrowWithPolicies(t *testing.T) {
	type cost struct{ rules, lookups int }
	measure := func(n, lookupMin int) cost {
		m, pk := pathModel(n)
		kt := toKernel(Compile(m, Config{LookupMinPolicies: lookupMin}))
		var trace []string
		ok, err := kt.run("forward", newWirePacket(pk), &trace)
		if err != nil || !ok {
			t.Fatalf("%d policies: allowed=%v, err=%v\n%s", n, ok, err, describeTrace(trace))
		}
		return cost{kt.rulesRun, kt.lookups}
	}
	var lookup []cost
	for _, n := range []int{10, 100, 1000} {
		walk, look := measure(n, 1<<30), measure(n, DefaultLookupMinPolicies)
		t.Logf("%4d policies: walk %5d rules %5d lookups; lookup layout %d rules %d lookups", n, walk.rules, walk.lookups, look.rules, look.lookups)
		if n >= DefaultLookupMinPolicies {
			lookup = append(lookup, look)
		}
		if n == 1000 && walk.lookups < 1000 {
			t.Fatalf("the walk of 1,000 policies did only %d lookups: the model no longer makes the client's policy last", walk.lookups)
		}
	}
	for _, c := range lookup[1:] {
		if c != lookup[0] {
			t.Fatalf("the lookup layout's cost grows with the policies: %v", lookup)
		}
	}
}
