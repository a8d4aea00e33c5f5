package nft

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"
)

// elemsPerLine keeps element lists of 100k entries readable and diffable.
const elemsPerLine = 8

// NftText renders the whole desired table as `nft -f` input, elements
// included. Unlike String (the `nftpol dump` format), it loads: it is the
// same table our netlink batch commits, in the nft tool's language, which
// lets us compare the two ways of committing it and gives operators a file
// they can load by hand.
//
// Like Enforcer.Sync's full commit it replaces the table in one
// transaction: create (a no-op if present), delete, create with content.
func (r *Ruleset) NftText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {}\ndelete table inet %s\n", r.Table, r.Table)
	fmt.Fprintf(&b, "table inet %s {\n", r.Table)
	// Sets first so rules can refer to them; verdict maps may name chains
	// declared further down, nft resolves those within the transaction.
	for _, name := range r.sortedSetNames() {
		writeSetText(&b, r.sets[name])
	}
	for _, name := range r.sortedChainNames() {
		c := r.chains[name]
		fmt.Fprintf(&b, "\tchain %s {\n", name)
		if c.hook != "" {
			fmt.Fprintf(&b, "\t\ttype filter hook %s priority %d; policy accept;\n", c.hook, c.prio)
		}
		for i := range c.rules {
			fmt.Fprintf(&b, "\t\t%s\n", ruleText(&c.rules[i]))
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
	return b.String()
}

// ruleText is the rule as ruleSpec.String renders it, except where nft
// would compile that text into other expressions than ruleSpec.exprs
// writes: "icmpv6 type" in an inet table gets a `meta nfproto ipv6` in
// front, which our rule lacks, so the match is spelled out raw.
func ruleText(r *ruleSpec) string {
	if r.icmpv6Type == 0 {
		return r.String()
	}
	rest := *r
	rest.icmpv6Type = 0
	return fmt.Sprintf("meta l4proto ipv6-icmp @th,0,8 %d %s", r.icmpv6Type, rest.String())
}

func writeSetText(b *strings.Builder, s *setSpec) {
	keyword := "set"
	if s.kind.vmap() {
		keyword = "map"
	}
	fmt.Fprintf(b, "\t%s %s {\n\t\t%s\n", keyword, s.name, s.kind)
	if s.comment != "" {
		fmt.Fprintf(b, "\t\tcomment %s;\n", quoteNft(s.comment))
	}
	// nft rejects an empty element list, so an empty set has none.
	if len(s.elems) > 0 {
		keys := make([]string, 0, len(s.elems))
		for k := range s.elems {
			keys = append(keys, k)
		}
		// Key bytes are big-endian, so this is address order: stable output.
		sort.Strings(keys)
		b.WriteString("\t\telements = {")
		for i, k := range keys {
			switch {
			case i%elemsPerLine == 0:
				if i > 0 {
					b.WriteString(",")
				}
				b.WriteString("\n\t\t\t")
			default:
				b.WriteString(", ")
			}
			b.WriteString(elementText(s, k))
		}
		b.WriteString("\n\t\t}\n")
	}
	b.WriteString("\t}\n")
}

// elementText renders one element key (laid out as in setSpec.elems) in
// nft syntax.
func elementText(s *setSpec, key string) string {
	addrLen := 4
	if s.kind.family() == 6 {
		addrLen = 16
	}
	addr := func(k string) string {
		a, _ := netip.AddrFromSlice([]byte(k))
		return a.String()
	}
	switch {
	case s.kind.interval():
		first, last := key[:addrLen], key[addrLen:]
		if first == last {
			return addr(first)
		}
		// Spaces around the dash: IPv6 addresses end in ':' ("fd00::"),
		// which must not run into the range operator.
		return addr(first) + " - " + addr(last)
	case s.kind == kindPorts4 || s.kind == kindPorts6:
		// portKey: address, protocol and port each padded to 4 bytes. The
		// protocol goes by number, which nft's inet_proto type accepts for
		// any protocol, named or not.
		proto := key[addrLen]
		port := uint16(key[addrLen+4])<<8 | uint16(key[addrLen+5])
		return fmt.Sprintf("%s . %d . %d", addr(key[:addrLen]), proto, port)
	case s.kind.vmap():
		return addr(key) + " : jump " + s.elems[key]
	}
	return addr(key)
}

// quoteNft quotes a string for nft: its lexer knows no escapes, so a double
// quote inside cannot be expressed and becomes a single one.
func quoteNft(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `'`) + `"`
}
