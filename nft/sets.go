package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/selectors"
)

// This file is the home of sets: their kinds and how each maps to the
// kernel and back, the keys of their elements and how each becomes kernel
// elements and back, and how many elements fit in one netlink attribute.

// setKind is the shape of a set: key type, data type and flags.
type setKind uint8

const (
	kindUnknown   setKind = iota // read back: a shape nftpol never writes
	kindAddr4                    // ipv4_addr
	kindAddr6                    // ipv6_addr
	kindInterval4                // ipv4_addr, flags interval
	kindInterval6                // ipv6_addr, flags interval
	kindPorts4                   // ipv4_addr . inet_proto . inet_service
	kindPorts6                   // ipv6_addr . inet_proto . inet_service
	kindVmap4                    // ipv4_addr : verdict
	kindVmap6                    // ipv6_addr : verdict
	// The lookup maps of an isolation group (lookup.go).
	kindPortsVmap4    // ipv4_addr . inet_proto . inet_service : verdict
	kindPortsVmap6    // ipv6_addr . inet_proto . inet_service : verdict
	kindIntervalVmap4 // ipv4_addr : verdict, flags interval
	kindIntervalVmap6 // ipv6_addr : verdict, flags interval
	// The single ports of one rule (compile.go, serviceSet), of either
	// family: a rule of n ports is one lookup, not n rules.
	kindServices // inet_proto . inet_service
)

// setKinds lists the kinds nftpol writes.
var setKinds = [...]setKind{kindAddr4, kindAddr6, kindInterval4, kindInterval6, kindPorts4, kindPorts6, kindVmap4, kindVmap6,
	kindPortsVmap4, kindPortsVmap6, kindIntervalVmap4, kindIntervalVmap6, kindServices}

func vmapKind(family int) setKind {
	if family == 6 {
		return kindVmap6
	}
	return kindVmap4
}

func (k setKind) family() int {
	switch k {
	case kindAddr6, kindInterval6, kindPorts6, kindVmap6, kindPortsVmap6, kindIntervalVmap6:
		return 6
	}
	return 4
}

func (k setKind) interval() bool {
	return k == kindInterval4 || k == kindInterval6 || k == kindIntervalVmap4 || k == kindIntervalVmap6
}

func (k setKind) vmap() bool {
	return k == kindVmap4 || k == kindVmap6 || k == kindPortsVmap4 || k == kindPortsVmap6 ||
		k == kindIntervalVmap4 || k == kindIntervalVmap6
}

func (k setKind) ports() bool {
	return k == kindPorts4 || k == kindPorts6 || k == kindPortsVmap4 || k == kindPortsVmap6
}

// addrLen is the length of the kind's address, the first field of its key
// (none in a set of services).
func (k setKind) addrLen() int {
	if k == kindServices {
		return 0
	}
	if k.family() == 6 {
		return 16
	}
	return 4
}

// keyLen is the length of one element key as setSpec.elems holds it.
func (k setKind) keyLen() int {
	switch {
	case k.interval():
		return 2 * k.addrLen()
	case k.ports():
		return k.addrLen() + 8
	case k == kindServices:
		return 8
	}
	return k.addrLen()
}

// apply sets the key type, data type and flags of s to the kind's.
func (k setKind) apply(s *nftables.Set) {
	addr := nftables.TypeIPAddr
	if k.family() == 6 {
		addr = nftables.TypeIP6Addr
	}
	s.KeyType = addr
	if k.interval() {
		s.Interval = true
	}
	if k.ports() {
		// No NFT_SET_CONCAT flag: like the nft tool, which sets it only
		// for interval concatenations, so that a table loaded with
		// `nft -f` (NftText) is the same table.
		s.KeyType = nftables.MustConcatSetType(addr, nftables.TypeInetProto, nftables.TypeInetService)
	}
	if k == kindServices {
		s.KeyType = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	}
	if k.vmap() {
		s.IsMap, s.DataType = true, nftables.TypeVerdict
	}
}

// kernelSetShape is what the kernel reports of a set besides its name and
// elements: flags, key and data types and lengths, and any option nftpol
// never sets (a timeout, a size, expressions).
type kernelSetShape struct {
	flags             uint32
	keyType, keyLen   uint32
	dataType, dataLen uint32
	extra             string
}

// shape is the kernelSetShape of the sets apply describes, as the kernel
// reports it: a verdict map's data length is that of a verdict in the
// kernel (struct nft_verdict), whatever the request said.
func (k setKind) shape() kernelSetShape {
	var s nftables.Set
	k.apply(&s)
	sh := kernelSetShape{keyType: s.KeyType.GetNFTMagic(), keyLen: s.KeyType.Bytes}
	if s.Interval {
		sh.flags |= unix.NFT_SET_INTERVAL
	}
	if s.IsMap {
		sh.flags |= unix.NFT_SET_MAP
		sh.dataType, sh.dataLen = unix.NFT_DATA_VERDICT, verdictDataLen
	}
	return sh
}

// Set attributes x/sys/unix does not name (linux/netfilter/nf_tables.h).
const (
	nftaSetExpr        = 0x11
	nftaSetExpressions = 0x12
)

// verdictDataLen is the kernel's size of a verdict (code and chain
// pointer), which it reports as a verdict map's data length.
const verdictDataLen = 16

// kindOf is the inverse of apply: the kind whose shape is exactly the
// kernel's report, or kindUnknown. Any flag or option nftpol never sets
// makes the set unknown, so that a set changed behind our back is drift.
func kindOf(sh kernelSetShape) setKind {
	if sh.extra != "" {
		return kindUnknown
	}
	for _, k := range setKinds {
		if k.shape() == sh {
			return k
		}
	}
	return kindUnknown
}

// setFromMessage decodes one NFT_MSG_NEWSET message of a set dump: the
// set's name, shape and comment.
func setFromMessage(data []byte) (name string, sh kernelSetShape, comment string, err error) {
	if len(data) < 4 {
		return "", sh, "", errors.New("message shorter than its nfgenmsg header")
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return "", sh, "", err
	}
	ad.ByteOrder = binary.BigEndian
	var extras []string
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_SET_NAME:
			name = ad.String()
		case unix.NFTA_SET_FLAGS:
			sh.flags = ad.Uint32()
		case unix.NFTA_SET_KEY_TYPE:
			sh.keyType = ad.Uint32()
		case unix.NFTA_SET_KEY_LEN:
			sh.keyLen = ad.Uint32()
		case unix.NFTA_SET_DATA_TYPE:
			sh.dataType = ad.Uint32()
		case unix.NFTA_SET_DATA_LEN:
			sh.dataLen = ad.Uint32()
		case unix.NFTA_SET_USERDATA:
			comment, _ = userdata.GetString(ad.Bytes(), userdata.NFTNL_UDATA_SET_COMMENT)
		case unix.NFTA_SET_TIMEOUT:
			extras = append(extras, "timeout")
		case unix.NFTA_SET_GC_INTERVAL:
			extras = append(extras, "gc-interval")
		case nftaSetExpr, nftaSetExpressions:
			extras = append(extras, "expressions")
		case unix.NFTA_SET_OBJ_TYPE:
			extras = append(extras, "object map")
		case unix.NFTA_SET_DESC:
			ad.Nested(func(d *netlink.AttributeDecoder) error {
				for d.Next() {
					if d.Type() == unix.NFTA_SET_DESC_SIZE && d.Uint32() != 0 {
						extras = append(extras, fmt.Sprintf("size %d", d.Uint32()))
					}
				}
				return nil
			})
		}
	}
	sh.extra = strings.Join(extras, ",")
	return name, sh, comment, ad.Err()
}

// String is the kind in nft syntax, as a set's declaration.
func (k setKind) String() string {
	switch k {
	case kindAddr4:
		return "type ipv4_addr;"
	case kindAddr6:
		return "type ipv6_addr;"
	case kindInterval4:
		return "type ipv4_addr; flags interval;"
	case kindInterval6:
		return "type ipv6_addr; flags interval;"
	case kindPorts4:
		return "type ipv4_addr . inet_proto . inet_service;"
	case kindPorts6:
		return "type ipv6_addr . inet_proto . inet_service;"
	case kindVmap4:
		return "type ipv4_addr : verdict;"
	case kindVmap6:
		return "type ipv6_addr : verdict;"
	case kindPortsVmap4:
		return "type ipv4_addr . inet_proto . inet_service : verdict;"
	case kindPortsVmap6:
		return "type ipv6_addr . inet_proto . inet_service : verdict;"
	case kindIntervalVmap4:
		return "type ipv4_addr : verdict; flags interval;"
	case kindIntervalVmap6:
		return "type ipv6_addr : verdict; flags interval;"
	case kindServices:
		return "type inet_proto . inet_service;"
	}
	return "# a set of a type nftpol does not write"
}

// setSpec is one named set.
type setSpec struct {
	name    string
	kind    setKind
	comment string
	// elems maps an element's key (see the key functions below) to its
	// value: the jump target for a verdict map, else "".
	elems elements
	// serial, when not nil, tells this spec apart from every other one
	// (a Compiler gives one to each address set spec it makes). base,
	// when not nil, is the serial of the spec this one was made from by
	// deleting the keys removed and adding the keys added (both
	// ascending, disjoint): Diff against that spec takes them as they are
	// instead of comparing every element. Made only by addrSetFromDelta.
	// Serials are pointers, not numbers: unique across Compilers (a
	// table committed by one and diffed against another's never matches
	// by accident), and a spec holds its base's serial, not the spec, so
	// no chain of old versions stays reachable.
	serial, base   *setSerial
	added, removed []string
}

// setSerial identifies one set spec (see setSpec.serial).
type setSerial struct{ _ byte } // not zero-sized: every one has its own address

func (s *setSpec) sortedKeys() []string {
	keys := make([]string, 0, s.elems.len())
	for k := range s.elems.all() {
		keys = append(keys, k)
	}
	// Key bytes are big-endian: this is address order.
	sort.Strings(keys)
	return keys
}

// addrSetSpecs compiles a peer address set into its IPv4 and IPv6 sets:
// hash sets of pod addresses, or interval sets when ipBlocks give ranges.
func addrSetSpecs(s *selectors.AddrSet) [2]*setSpec {
	interval := len(s.Ranges) > 0
	var out [2]*setSpec
	for i, fam := range []int{4, 6} {
		kind := kindAddr4
		switch {
		case interval && fam == 4:
			kind = kindInterval4
		case interval:
			kind = kindInterval6
		case fam == 6:
			kind = kindAddr6
		}
		spec := &setSpec{name: addrSetName(s.ID, fam), kind: kind, comment: truncateComment(s.Description)}
		for _, a := range s.Addrs {
			if familyOf(a) != fam {
				continue
			}
			if interval {
				spec.elems.put(rangeKey(a, a), "")
			} else {
				spec.elems.put(addrKey(a), "")
			}
		}
		for _, r := range s.Ranges {
			if familyOf(r.First) == fam {
				spec.elems.put(rangeKey(r.First, r.Last), "")
			}
		}
		out[i] = spec
	}
	return out
}

// addrSetFromDelta compiles s, whose Delta starts from the version prev
// was compiled from, out of prev's specs of that version: a family the
// delta does not touch keeps its spec (Diff skips it by identity), the
// other gets the elements with the delta applied (sharing the old ones,
// see elements) and keeps the delta's keys for Diff. It returns false when prev holds no hash set of
// that name for a family (then s is compiled in full).
func addrSetFromDelta(prev *Ruleset, s *selectors.AddrSet) ([2]*setSpec, bool) {
	var out [2]*setSpec
	for i, fam := range []int{4, 6} {
		kind := kindAddr4
		if fam == 6 {
			kind = kindAddr6
		}
		old := prev.sets[addrSetName(s.ID, fam)]
		if old == nil || old.serial == nil || old.kind != kind {
			return out, false
		}
		added, removed := addrKeysOf(s.Delta.Added, fam), addrKeysOf(s.Delta.Removed, fam)
		if len(added) == 0 && len(removed) == 0 {
			out[i] = old
			continue
		}
		out[i] = &setSpec{name: old.name, kind: old.kind, comment: old.comment, elems: old.elems.withDelta(added, removed),
			serial: newSerial(), base: old.serial, added: added, removed: removed}
	}
	return out, true
}

// addrKeysOf returns the element keys of the addresses of one family, in
// the order given (ascending addresses give ascending keys).
func addrKeysOf(addrs []netip.Addr, family int) []string {
	var keys []string
	for _, a := range addrs {
		if familyOf(a) == family {
			keys = append(keys, addrKey(a))
		}
	}
	return keys
}

// portSetSpecs compiles a named-port set into its IPv4 and IPv6 sets.
func portSetSpecs(s *selectors.PortSet) [2]*setSpec {
	var out [2]*setSpec
	for i, fam := range []int{4, 6} {
		kind := kindPorts4
		if fam == 6 {
			kind = kindPorts6
		}
		spec := &setSpec{name: portSetName(s.ID, fam), kind: kind, comment: truncateComment(s.Description)}
		for _, e := range s.Entries {
			if familyOf(e.Addr) == fam {
				spec.elems.put(portKey(e.Addr, e.Protocol, e.Port), "")
			}
		}
		out[i] = spec
	}
	return out
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

// Element keys. Each is the bytes the kernel compares, as a string so it
// can key a map.

// addrKey is the key of an address element. (Built from an array: one
// allocation per element, which counts at 100k elements per sync.)
func addrKey(a netip.Addr) string {
	if a.Is4() {
		b := a.As4()
		return string(b[:])
	}
	b := a.As16()
	return string(b[:])
}

// rangeKey is the key of an interval element [first, last]: both ends, so
// that a range is one element here though it is two in the kernel.
func rangeKey(first, last netip.Addr) string {
	if first.Is4() {
		f, l := first.As4(), last.As4()
		return string(append(f[:], l[:]...))
	}
	f, l := first.As16(), last.As16()
	return string(append(f[:], l[:]...))
}

// portKey is the key of a concatenated (address . protocol . port)
// element: each field padded to a multiple of 4 bytes, as registers hold
// them.
func portKey(a netip.Addr, proto selectors.Protocol, port uint16) string {
	key := make([]byte, 0, 24)
	key = append(key, a.AsSlice()...)
	return string(appendService(key, proto, port))
}

// serviceKey is the key of a (protocol . port) element: portKey without
// the address.
func serviceKey(proto selectors.Protocol, port uint16) string {
	return string(appendService(make([]byte, 0, 8), proto, port))
}

func appendService(key []byte, proto selectors.Protocol, port uint16) []byte {
	return append(key, byte(proto), 0, 0, 0, byte(port>>8), byte(port), 0, 0)
}

// kernelElements turns one element key into kernel elements: an interval
// [first, last] is a start element and an end element at last+1 (none
// when last is the top of the address space); a verdict map element jumps
// to its chain.
func (s *setSpec) kernelElements(key string) []nftables.SetElement {
	return s.appendKernelElements(nil, key)
}

// appendKernelElements is kernelElements appending to dst, so that a long
// list of elements is one slice, not one per key.
func (s *setSpec) appendKernelElements(dst []nftables.SetElement, key string) []nftables.SetElement {
	switch {
	case s.kind.interval():
		n := len(key) / 2
		first, last := []byte(key[:n]), []byte(key[n:])
		start := nftables.SetElement{Key: first}
		if s.kind.vmap() {
			start.VerdictData = &expr.Verdict{Kind: expr.VerdictJump, Chain: s.elems.get(key)}
		}
		dst = append(dst, start)
		if end, ok := increment(last); ok {
			dst = append(dst, nftables.SetElement{Key: end, IntervalEnd: true})
		}
		return dst
	case s.kind.vmap():
		return append(dst, nftables.SetElement{Key: []byte(key), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: s.elems.get(key)}})
	}
	return append(dst, nftables.SetElement{Key: []byte(key)})
}

// elemsFromKernel is the inverse of kernelElements over a whole set: the
// element keys and values of kernel elements read back. Anything that
// kernelElements never produces (a key of another length, an interval end
// without a start, a verdict other than a jump) comes back as a key or
// value that no committed set holds, so that comparing finds it.
func elemsFromKernel(kind setKind, elems []nftables.SetElement) map[string]string {
	out := make(map[string]string, len(elems))
	if !kind.interval() {
		for _, el := range elems {
			v := ""
			if kind.vmap() {
				v = verdictOf(el.Val)
			} else if len(el.Val) > 0 {
				v = fmt.Sprintf("data %x", el.Val)
			}
			if extra := extraOf(el); extra != "" {
				v += " with " + extra
			}
			out[string(el.Key)] = v
		}
		return out
	}
	// The kernel dumps an interval set's elements in no promised order;
	// sorted by key, with an end before a start of the same key, each
	// start is followed by its end (if any).
	sort.SliceStable(elems, func(i, j int) bool {
		if c := bytes.Compare(elems[i].Key, elems[j].Key); c != 0 {
			return c < 0
		}
		return elems[i].IntervalEnd && !elems[j].IntervalEnd
	})
	for i := 0; i < len(elems); i++ {
		el := elems[i]
		if el.IntervalEnd && i == 0 && len(el.Key) == kind.addrLen() && isZero(el.Key) && extraOf(el) == "" {
			// The nft tool writes an end at the lowest address before the
			// first range: it matches nothing.
			continue
		}
		if el.IntervalEnd || len(el.Key) != kind.addrLen() || extraOf(el) != "" {
			// An end with no start, or an element of another shape: keep
			// it visible under a key no compiled set holds.
			out[malformedKey+string(el.Key)] = extraOf(el)
			continue
		}
		v := ""
		if kind.vmap() {
			v = verdictOf(el.Val)
		} else if len(el.Val) > 0 {
			v = fmt.Sprintf("data %x", el.Val)
		}
		last := bytes.Repeat([]byte{0xff}, len(el.Key))
		if i+1 < len(elems) && elems[i+1].IntervalEnd {
			if end := elems[i+1]; len(end.Val) > 0 || extraOf(end) != "" {
				v += " with an end carrying data"
			}
			last = decrement(elems[i+1].Key)
			i++
		}
		out[string(el.Key)+string(last)] = v
	}
	return out
}

// malformedKey prefixes the keys of interval elements read back that
// kernelElements never writes.
const malformedKey = "malformed:"

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// increment returns b+1 as a big-endian number, false on overflow.
func increment(b []byte) ([]byte, bool) {
	out := bytes.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, true
		}
	}
	return nil, false
}

// decrement returns b-1 as a big-endian number (b > 0).
func decrement(b []byte) []byte {
	out := bytes.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]--
		if out[i] != 0xff {
			break
		}
	}
	return out
}

// verdictOf decodes a verdict map element's data (google/nftables returns
// the NFTA_DATA_VERDICT attributes raw) into the value elems holds: the
// chain of a jump, or a text that no chain name of ours can equal.
func verdictOf(data []byte) string {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return "malformed verdict"
	}
	ad.ByteOrder = binary.BigEndian
	code, chain := int32(0), ""
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_VERDICT_CODE:
			code = int32(ad.Uint32())
		case unix.NFTA_VERDICT_CHAIN:
			chain = ad.String()
		}
	}
	if ad.Err() != nil {
		return "malformed verdict"
	}
	if code == unix.NFT_JUMP && chain != "" {
		return chain
	}
	return fmt.Sprintf("verdict %d %s", code, chain)
}

// extraOf describes what an element read back carries beyond a key and a
// value (a timeout, an end key, a counter, a comment): nothing nftpol
// writes, so anything here makes the element differ.
func extraOf(el nftables.SetElement) string {
	var parts []string
	if el.Timeout != 0 || el.Expires != 0 {
		parts = append(parts, "timeout")
	}
	if len(el.KeyEnd) > 0 {
		parts = append(parts, "key-end")
	}
	if el.Counter != nil {
		parts = append(parts, "counter")
	}
	if el.Comment != "" {
		parts = append(parts, "comment")
	}
	return strings.Join(parts, ",")
}

// elemAttrSize is an upper bound of the netlink encoding of one kernel
// element as google/nftables v0.3.0 writes it (set.go, makeElemList): the
// list entry header, the interval-end flags, the nested key and, for a
// verdict, two nested data attributes around the verdict code and chain.
func elemAttrSize(el nftables.SetElement) int {
	n := 4 // NFTA_LIST_ELEM
	if el.IntervalEnd {
		n += 8
	}
	n += 4 + 4 + align4(len(el.Key)) // NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE }
	if el.VerdictData != nil {
		// ELEM_DATA { ELEM_DATA { DATA_VALUE(code) ELEM_DATA(chain\0) } }
		n += 4 + 4 + 8 + 4 + align4(len(el.VerdictData.Chain)+1)
	}
	return n
}

func align4(n int) int { return (n + 3) &^ 3 }

// elemListMax is how many bytes of elements one NFTA_SET_ELEM_LIST_ELEMENTS
// attribute may carry: AttrLengthMax less its own header.
const elemListMax = AttrLengthMax - 4

// elementLists passes the kernel elements of keys to emit in lists that
// each encode within one netlink attribute of limit bytes, making one list
// at a time: the elements of a set of 100k addresses never exist all at
// once beside the messages they become (BENCHMARKS.md, memory at 100k
// pods). emit must not keep the list.
func elementLists(spec *setSpec, keys []string, limit int, emit func([]nftables.SetElement) error) error {
	var list, next []nftables.SetElement
	size := 0
	for _, k := range keys {
		next = spec.appendKernelElements(next[:0], k)
		for _, el := range next {
			n := elemAttrSize(el)
			if size+n > limit && len(list) > 0 {
				if err := emit(list); err != nil {
					return err
				}
				list, size = list[:0], 0
			}
			list = append(list, el)
			size += n
		}
	}
	if len(list) > 0 {
		return emit(list)
	}
	return nil
}

// describeKey renders an element key for an error message.
func describeKey(kind setKind, k string) string {
	if a, ok := netip.AddrFromSlice([]byte(k)); ok {
		return a.String()
	}
	if kind != kindUnknown && len(k) == kind.keyLen() {
		return elementText(kind, k, "")
	}
	return fmt.Sprintf("%x", k)
}
