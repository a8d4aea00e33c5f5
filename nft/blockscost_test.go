package nft

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// blocksModel is BenchmarkPacketPath's phase I in miniature: one policy
// selecting the server whose one rule allows n ipBlocks (single
// addresses, the client's last) on ports TCP ports.
func blocksModel(n int, ports []uint16) (*selectors.Model, netip.Addr, netip.Addr) {
	m := &selectors.Model{}
	client := netip.MustParseAddr("10.9.0.1")
	rule := selectors.Rule{}
	for _, p := range ports {
		rule.Ports.Ranges = append(rule.Ports.Ranges, selectors.PortRange{Protocol: selectors.ProtocolTCP, First: p, Last: p})
	}
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, 252, byte(i / 200), byte(2 * (i % 100))})
		if i == n-1 {
			a = client
		}
		id := fmt.Sprintf("cidr=%s/32", a)
		m.AddrSets = append(m.AddrSets, selectors.AddrSet{ID: id, Description: id, Ranges: []selectors.AddrRange{{First: a, Last: a}}})
		rule.Peers.Sets = append(rule.Peers.Sets, id)
	}
	m.Policies = []selectors.PolicyRules{{Key: "srv/blocks", HasIngress: true, Ingress: []selectors.Rule{rule}}}
	server := netip.MustParseAddr("10.0.0.1")
	m.Pods = []selectors.PodRules{{Key: "srv/server", IPs: []netip.Addr{server}, Ingress: []string{"srv/blocks"}}}
	return m, client, server
}

// TestBlocksCostPerConnection counts the rules and lookups a new
// connection costs under one policy of many ipBlocks × 5 ports
// (BenchmarkPacketPath's phase I; BENCHMARKS.md, round four): they do not
// grow with the ipBlocks, which share one interval set per family.
func TestBlocksCostPerConnection(t *testing.T) {
	ports := []uint16{80, 5201, 8000, 8001, 8002}
	type cost struct{ rules, lookups int }
	measure := func(n int, port uint16) cost {
		m, client, server := blocksModel(n, ports)
		kt := toKernel(Compile(m, Config{}))
		var trace []string
		pk := selectorstest.Packet{Src: client, Dst: server, Protocol: selectors.ProtocolTCP, Port: port}
		ok, err := kt.run("forward", newWirePacket(pk), &trace)
		if err != nil || !ok {
			t.Fatalf("%d ipBlocks, port %d: allowed=%v, err=%v\n%s", n, port, ok, err, describeTrace(trace))
		}
		return cost{kt.rulesRun, kt.lookups}
	}
	for _, port := range []uint16{80, 8002} {
		small, large := measure(10, port), measure(1000, port)
		t.Logf("port %d: 10 ipBlocks %d rules %d lookups; 1,000 ipBlocks %d rules %d lookups", port, small.rules, small.lookups, large.rules, large.lookups)
		if small != large {
			t.Errorf("port %d: the cost grows with the ipBlocks: %v with 10, %v with 1,000", port, small, large)
		}
	}
}
