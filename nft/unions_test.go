package nft

import (
	"fmt"
	"math/rand"
	"net/netip"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

func TestMergeRanges(t *testing.T) {
	r := func(first, last string) selectors.AddrRange {
		return selectors.AddrRange{First: netip.MustParseAddr(first), Last: netip.MustParseAddr(last)}
	}
	for _, tc := range []struct {
		name     string
		in, want []selectors.AddrRange
	}{
		{"empty", nil, nil},
		{"disjoint stay apart", []selectors.AddrRange{r("10.0.0.5", "10.0.0.9"), r("10.0.0.0", "10.0.0.3")},
			[]selectors.AddrRange{r("10.0.0.0", "10.0.0.3"), r("10.0.0.5", "10.0.0.9")}},
		{"touching join", []selectors.AddrRange{r("10.0.0.4", "10.0.0.9"), r("10.0.0.0", "10.0.0.3")},
			[]selectors.AddrRange{r("10.0.0.0", "10.0.0.9")}},
		{"contained", []selectors.AddrRange{r("10.0.0.0", "10.0.0.15"), r("10.0.0.0", "10.0.0.255"), r("10.0.0.8", "10.0.0.9")},
			[]selectors.AddrRange{r("10.0.0.0", "10.0.0.255")}},
		{"overlapping", []selectors.AddrRange{r("10.0.0.0", "10.0.0.10"), r("10.0.0.5", "10.0.0.20")},
			[]selectors.AddrRange{r("10.0.0.0", "10.0.0.20")}},
		{"families never join", []selectors.AddrRange{r("::", "::ff"), r("0.0.0.0", "255.255.255.255")},
			[]selectors.AddrRange{r("0.0.0.0", "255.255.255.255"), r("::", "::ff")}},
		{"the last address", []selectors.AddrRange{r("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"), r("::", "::1")},
			[]selectors.AddrRange{r("::", "::1"), r("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := mergeRanges(tc.in)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Errorf("mergeRanges(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

// TestPeerUnionDecidesLikeItsPeers compiles rules whose peers are several
// random, overlapping ipBlocks (and now and then a pod set, which stays
// its own set) and runs, with the interpreter, a packet from every address
// of a small universe of both families: the table accepts exactly the
// packets from an address in some peer, to a port of the rule. A rule's
// ipBlocks take one lookup per port part and family.
func TestPeerUnionDecidesLikeItsPeers(t *testing.T) {
	rnd := rand.New(rand.NewSource(1))
	v4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}) }
	v6 := func(i int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00::%x", i)) }
	const universe = 64
	server := []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("fd01::1")}
	ports := []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: 80}, {Protocol: selectors.ProtocolUDP, First: 53, Last: 60}}
	for round := 0; round < 200; round++ {
		m := &selectors.Model{
			Pods: []selectors.PodRules{{Key: "x/server", IPs: server, Ingress: []string{"x/p"}}},
		}
		var rule selectors.Rule
		inPeer := map[netip.Addr]bool{}
		blocks := 2 + rnd.Intn(5)
		for b := 0; b < blocks; b++ {
			set := selectors.AddrSet{ID: fmt.Sprintf("cidr=%d-%d", round, b), Description: "ipBlock"}
			for n := 1 + rnd.Intn(3); n > 0; n-- {
				first := rnd.Intn(universe)
				last := first + rnd.Intn(universe-first)
				addr := v4
				if rnd.Intn(2) == 0 {
					addr = v6
				}
				set.Ranges = append(set.Ranges, selectors.AddrRange{First: addr(first), Last: addr(last)})
				for i := first; i <= last; i++ {
					inPeer[addr(i)] = true
				}
			}
			set.Ranges = mergeRanges(set.Ranges) // the model's ranges are disjoint
			m.AddrSets = append(m.AddrSets, set)
			rule.Peers.Sets = append(rule.Peers.Sets, set.ID)
		}
		if rnd.Intn(3) == 0 {
			pods := selectors.AddrSet{ID: "pods", Addrs: []netip.Addr{v4(universe - 1), v6(universe - 1)}}
			m.AddrSets = append(m.AddrSets, pods)
			rule.Peers.Sets = append(rule.Peers.Sets, pods.ID)
			inPeer[v4(universe-1)], inPeer[v6(universe-1)] = true, true
		}
		rule.Ports.Ranges = ports
		m.Policies = []selectors.PolicyRules{{Key: "x/p", HasIngress: true, Ingress: []selectors.Rule{rule}}}

		rs := Compile(m, Config{})
		pol := rs.chains[policyChainName("x/p", selectors.Ingress)]
		sets := 1 + len(rule.Peers.Sets) - blocks
		if want := sets * len(ports) * 2; len(pol.rules) != want {
			t.Fatalf("round %d: the policy chain has %d rules, want %d (one per peer set, port part and family):\n%s", round, len(pol.rules), want, rs)
		}
		for _, id := range rule.Peers.Sets[:blocks] {
			if rs.sets[addrSetName(id, 4)] != nil || rs.sets[addrSetName(id, 6)] != nil {
				t.Fatalf("round %d: the set of ipBlock %s stays in the table though only its union is looked up", round, id)
			}
		}
		kt := toKernel(rs)
		for i := 0; i < universe; i++ {
			for _, src := range []netip.Addr{v4(i), v6(i)} {
				dst := server[0]
				if src.Is6() {
					dst = server[1]
				}
				for _, pk := range []selectorstest.Packet{
					{Src: src, Dst: dst, Protocol: selectors.ProtocolTCP, Port: 80},
					{Src: src, Dst: dst, Protocol: selectors.ProtocolUDP, Port: 60},
					{Src: src, Dst: dst, Protocol: selectors.ProtocolTCP, Port: 53},
				} {
					want := inPeer[src] && pk.Port != 53
					var trace []string
					got, err := kt.run(string(selectorstest.HookForward), newWirePacket(pk), &trace)
					if err != nil {
						t.Fatal(err)
					}
					if got != want {
						t.Fatalf("round %d: %s allowed=%v, want %v\n%s\n%s", round, pk, got, want, strings.Join(trace, "\n"), rs)
					}
				}
			}
		}
	}
}
