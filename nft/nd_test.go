package nft

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestNeighbourDiscoveryAcceptIsIPv6Only: the input-egress accept of
// neighbour discovery lets ICMPv6 types 135 and 136 from an
// egress-isolated pod reach its node, and nothing else. An IPv4 packet
// with IP protocol 58 and the same first byte is no neighbour discovery
// and must meet the pod's egress policy (which here allows nothing to
// the node).
func TestNeighbourDiscoveryAcceptIsIPv6Only(t *testing.T) {
	m := sampleModel() // x/a is egress-isolated by x/p2: UDP only
	kt := toKernel(Compile(m, Config{}))
	pod4, pod6 := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00::1")
	node4, node6 := netip.MustParseAddr("10.0.0.100"), netip.MustParseAddr("fd00::100")
	for _, tc := range []struct {
		name     string
		src, dst netip.Addr
		typ      byte
		allowed  bool
	}{
		{"IPv6 neighbour solicitation", pod6, node6, ndNeighborSolicit, true},
		{"IPv6 neighbour advertisement", pod6, node6, ndNeighborAdvert, true},
		{"IPv6 echo request", pod6, node6, 128, false},
		{"IPv4 protocol 58 shaped as a solicitation", pod4, node4, ndNeighborSolicit, false},
		{"IPv4 protocol 58 shaped as an advertisement", pod4, node4, ndNeighborAdvert, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := ndPacket(tc.src, tc.dst)
			w.transport[0] = tc.typ
			if tc.src.Is4() {
				w.network[9] = unix.IPPROTO_ICMPV6 // the IPv4 protocol field
			}
			var trace []string
			ok, err := kt.run(string(hookInput), w, &trace)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.allowed {
				t.Fatalf("reaches the node: %v, want %v\n%v", ok, tc.allowed, trace)
			}
		})
	}
}
