package nft

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// blocksModel is BenchmarkPacketPath's phase I in miniature: one policy
// selecting the server (IPv4 and IPv6) whose one rule allows n ipBlocks
// (single addresses, the client's two last) on ports TCP ports.
func blocksModel(n int, ports []uint16) (m *selectors.Model, clients [2]netip.Addr, servers [2]netip.Addr) {
	m = &selectors.Model{}
	clients = [2]netip.Addr{netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("fd00:9::1")}
	rule := selectors.Rule{}
	for _, p := range ports {
		rule.Ports.Ranges = append(rule.Ports.Ranges, selectors.PortRange{Protocol: selectors.ProtocolTCP, First: p, Last: p})
	}
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, 252, byte(i / 200), byte(2 * (i % 100))})
		if i%2 == 1 {
			a = netip.AddrFrom16([16]byte{0xfd, 0, 2, 0x52, 14: byte(i >> 7), 15: byte(2 * i)})
		}
		switch i {
		case n - 2:
			a = clients[0]
		case n - 1:
			a = clients[1]
		}
		id := fmt.Sprintf("cidr=%s", netip.PrefixFrom(a, a.BitLen()))
		m.AddrSets = append(m.AddrSets, selectors.AddrSet{ID: id, Description: id, Ranges: []selectors.AddrRange{{First: a, Last: a}}})
		rule.Peers.Sets = append(rule.Peers.Sets, id)
	}
	m.Policies = []selectors.PolicyRules{{Key: "srv/blocks", HasIngress: true, Ingress: []selectors.Rule{rule}}}
	servers = [2]netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")}
	m.Pods = []selectors.PodRules{{Key: "srv/server", IPs: servers[:], Ingress: []string{"srv/blocks"}}}
	return m, clients, servers
}

// TestBlocksCostPerConnection counts the rules and lookups a new
// connection costs under one policy of many ipBlocks × 5 ports
// (BenchmarkPacketPath's phase I; BENCHMARKS.md, rounds four and five):
// they grow neither with the ipBlocks, which share one interval set per
// family, nor with the port's place in the rule, the rule's single ports
// being one set of services: one rule per family.
func TestBlocksCostPerConnection(t *testing.T) {
	ports := []uint16{80, 5201, 8000, 8001, 8002}
	type cost struct{ rules, lookups int }
	measure := func(n, fam int, port uint16) cost {
		m, clients, servers := blocksModel(n, ports)
		kt := toKernel(Compile(m, Config{}))
		var trace []string
		pk := selectorstest.Packet{Src: clients[fam], Dst: servers[fam], Protocol: selectors.ProtocolTCP, Port: port}
		ok, err := kt.run("forward", newWirePacket(pk), &trace)
		if err != nil || !ok {
			t.Fatalf("%d ipBlocks, IPv%d, port %d: allowed=%v, err=%v\n%s", n, 4+2*fam, port, ok, err, describeTrace(trace))
		}
		return cost{kt.rulesRun, kt.lookups}
	}
	for fam := range 2 {
		first := measure(10, fam, ports[0])
		t.Logf("IPv%d: %d rules %d lookups for every port, 10 or 1,000 ipBlocks", 4+2*fam, first.rules, first.lookups)
		for _, port := range ports {
			for _, n := range []int{10, 1000} {
				if got := measure(n, fam, port); got != first {
					t.Errorf("IPv%d, port %d, %d ipBlocks: %+v, but %+v for port %d and 10 ipBlocks", 4+2*fam, port, n, got, first, ports[0])
				}
			}
		}
	}
	// And a port the rule does not name is refused.
	m, clients, servers := blocksModel(10, ports)
	pk := selectorstest.Packet{Src: clients[0], Dst: servers[0], Protocol: selectors.ProtocolTCP, Port: 8003}
	var trace []string
	if ok, err := toKernel(Compile(m, Config{})).run("forward", newWirePacket(pk), &trace); ok || err != nil {
		t.Errorf("port 8003: allowed=%v, err=%v; want refused", ok, err)
	}
}
