package nft

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/selectors"
)

// largeIPv6Model is the worst case for element batches: thousands of
// IPv6 isolated pods (verdict-map elements that jump to a 23-character
// chain, ~72 bytes each), a 50k-address IPv6 peer set, IPv6 ipBlock
// intervals and IPv6 named-port elements.
func largeIPv6Model(pods, peers, ranges, ports int) *selectors.Model {
	v6 := func(a, b, c uint16) netip.Addr {
		var x [16]byte
		x[0], x[1] = 0xfd, 0x00
		binary.BigEndian.PutUint16(x[10:], a)
		binary.BigEndian.PutUint16(x[12:], b)
		binary.BigEndian.PutUint16(x[14:], c)
		return netip.AddrFrom16(x)
	}
	m := &selectors.Model{}
	peer := selectors.AddrSet{ID: "peers", Description: "many IPv6 pods"}
	for i := 0; i < peers; i++ {
		peer.Addrs = append(peer.Addrs, v6(1, uint16(i>>16), uint16(i)))
	}
	block := selectors.AddrSet{ID: "block", Description: "IPv6 ipBlock minus excepts"}
	for i := 0; i < ranges; i++ {
		block.Ranges = append(block.Ranges, selectors.AddrRange{First: v6(2, uint16(i), 0), Last: v6(2, uint16(i), 0x7fff)})
	}
	named := selectors.PortSet{ID: "named", Description: "serve-80 on IPv6 pods"}
	for i := 0; i < ports; i++ {
		named.Entries = append(named.Entries, selectors.PortEntry{Addr: v6(3, 0, uint16(i)), Protocol: selectors.ProtocolTCP, Port: uint16(8000 + i%3)})
	}
	m.AddrSets = []selectors.AddrSet{block, peer}
	m.PortSets = []selectors.PortSet{named}
	m.Policies = []selectors.PolicyRules{{Key: "x/big", HasIngress: true, HasEgress: true,
		Ingress: []selectors.Rule{
			{Peers: selectors.PeerMatch{Sets: []string{"peers"}}, Ports: selectors.PortMatch{All: true}},
			{Peers: selectors.PeerMatch{Sets: []string{"block"}}, Ports: selectors.PortMatch{Named: "named"}},
		},
		Egress: []selectors.Rule{{Peers: selectors.PeerMatch{Sets: []string{"peers", "block"}}, Ports: selectors.PortMatch{All: true}}},
	}}
	for i := 0; i < pods; i++ {
		m.Pods = append(m.Pods, selectors.PodRules{Key: fmt.Sprintf("x/pod-%05d", i),
			IPs: []netip.Addr{v6(4, uint16(i>>16), uint16(i))}, Ingress: []string{"x/big"}, Egress: []string{"x/big"}})
	}
	return m
}

// TestElementListsFitOneAttribute records the batch of a full commit of
// the worst-case model and checks that every element list attribute is
// within the 16-bit netlink length, for every element shape: a longer one
// is not refused by the netlink library, its length wraps, and the kernel
// then fails the batch or keeps part of the list.
func TestElementListsFitOneAttribute(t *testing.T) {
	desired := Compile(largeIPv6Model(3_000, 50_000, 3_000, 3_000), Config{})
	table := &nftables.Table{Name: desired.Table, Family: nftables.TableFamilyINet}
	var sent []netlink.Message
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		sent = append(sent, req...)
		return req, nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := Diff(nil, desired).queue(c, table); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	newElem := netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWSETELEM)
	perSet := map[string]int{}
	lists := 0
	for _, m := range sent {
		if m.Header.Type != newElem {
			continue
		}
		set, n, longest := elementListOf(t, m.Data)
		perSet[set] += n
		lists++
		if longest > AttrLengthMax {
			t.Errorf("set %s: an element list of %d bytes, more than one attribute holds (%d)", set, longest, AttrLengthMax)
		}
	}
	for name, s := range desired.sets {
		want := 0
		for k := range s.elems.all() {
			want += len(s.kernelElements(k))
		}
		if perSet[name] != want {
			t.Errorf("set %s: %d kernel elements queued, want %d", name, perSet[name], want)
		}
	}
	t.Logf("%d element messages for %d sets", lists, len(perSet))
}

// elementListOf returns the set, the number of elements and the encoded
// length of the element list of one NEWSETELEM message, counting the
// elements by walking the list as the kernel would.
func elementListOf(t *testing.T, data []byte) (string, int, int) {
	t.Helper()
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		t.Fatal(err)
	}
	var set string
	var n, length int
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_ELEM_LIST_SET:
			set = ad.String()
		case unix.NFTA_SET_ELEM_LIST_ELEMENTS:
			b := ad.Bytes()
			length = len(b) + 4
			inner, err := netlink.NewAttributeDecoder(b)
			if err != nil {
				t.Fatal(err)
			}
			for inner.Next() {
				n++
			}
		}
	}
	return set, n, length
}

// TestLargeIPv6SetsReadBackComplete commits the worst-case model to the
// kernel and reads every element back, then changes a third of each set
// incrementally and reads them back again.
func TestLargeIPv6SetsReadBackComplete(t *testing.T) {
	ns := testNetns(t)
	e := newTestEnforcer(t, ns, DenyDrop)
	m := largeIPv6Model(2_500, 50_000, 2_000, 2_000)
	stats, err := e.Sync(m)
	if err != nil {
		t.Fatalf("full commit: %v", err)
	}
	t.Logf("full commit: %d elements in %v", stats.Elements, stats.Duration)
	if err := e.Verify(); err != nil {
		t.Fatalf("read back after the full commit: %v", err)
	}
	for name, want := range map[string]int{MapIngressV6: 2_500, MapEgressV6: 2_500, addrSetName("peers", 6): 50_000,
		addrSetName("block", 6): 4_000 /* start and end */, portSetName("named", 6): 2_000} {
		if n := setElementCount(t, ns, name); n != want {
			t.Errorf("set %s holds %d elements, want %d", name, n, want)
		}
	}
	// A third of every set changes: the pods and peers move, the ranges
	// and named ports shift.
	next := largeIPv6Model(2_500, 50_000, 2_000, 2_000)
	for i := range next.Pods {
		if i%3 == 0 {
			next.Pods[i].IPs = []netip.Addr{netip.MustParseAddr(fmt.Sprintf("fd00:5::%x", i+1))}
		}
	}
	for i := range next.AddrSets {
		s := &next.AddrSets[i]
		if len(s.Addrs) > 0 {
			s.Addrs = s.Addrs[len(s.Addrs)/3:]
		}
		if len(s.Ranges) > 0 {
			s.Ranges = s.Ranges[:2*len(s.Ranges)/3]
		}
	}
	next.PortSets[0].Entries = next.PortSets[0].Entries[len(next.PortSets[0].Entries)/3:]
	stats, err = e.Sync(next)
	if err != nil {
		t.Fatalf("incremental commit: %v", err)
	}
	if stats.Full {
		t.Fatal("the change fell back to a full replace")
	}
	t.Logf("incremental commit: +%d -%d elements in %v", stats.ElementsAdded, stats.ElementsDeleted, stats.Duration)
	if err := e.Verify(); err != nil {
		t.Fatalf("read back after the incremental commit: %v", err)
	}
}
