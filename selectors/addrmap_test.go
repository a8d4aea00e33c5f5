package selectors

import (
	"net/netip"
	"testing"
)

// TestAddrMapKeepsAddressesApart checks that the compact keys of addrMap
// never make two addresses one: an IPv4 address and its IPv4-mapped IPv6
// form, an address with a zone and without, all hold their own value, and
// deleting one leaves the others.
func TestAddrMapKeepsAddressesApart(t *testing.T) {
	addrs := []netip.Addr{
		netip.MustParseAddr("10.0.0.1"),
		netip.MustParseAddr("::ffff:10.0.0.1"),
		netip.MustParseAddr("fe80::1"),
		netip.MustParseAddr("fe80::1%eth0"),
		netip.MustParseAddr("fe80::1%eth1"),
		netip.MustParseAddr("fd00::a00:1"),
		netip.MustParseAddr("::a00:1"),
		netip.MustParseAddr("0.0.0.0"),
		netip.MustParseAddr("::"),
	}
	var m addrMap[int]
	for i, a := range addrs {
		if _, ok := m.get(a); ok {
			t.Fatalf("%s: found before it was set", a)
		}
		m.set(a, i)
	}
	for deleted := range addrs {
		for i, a := range addrs {
			v, ok := m.get(a)
			switch {
			case i < deleted && ok:
				t.Errorf("%s: found after it was deleted", a)
			case i >= deleted && (!ok || v != i):
				t.Errorf("%s: got %d, %t; want %d", a, v, ok, i)
			}
		}
		m.delete(addrs[deleted])
	}
}
