package nft

import (
	"fmt"
	"net/netip"
	"strings"
)

// This file renders a Ruleset as text: NftText is `nft -f` input that
// loads as the same table; String is the `nftpol dump` form, annotated.

// elemsPerLine keeps element lists of 100k entries readable and diffable.
const elemsPerLine = 8

// NftText renders the whole table as `nft -f` input, elements included:
// the same table our netlink batch commits, in the nft tool's language,
// which lets us compare the two ways of committing it and gives operators
// a file they can load by hand.
//
// Like a full Commit it replaces the table in one transaction: create (a
// no-op if present), delete, create with content.
func (r *Ruleset) NftText() string {
	var b strings.Builder
	fmt.Fprintf(&b, "table inet %s {}\ndelete table inet %s\n", r.Table, r.Table)
	r.writeTable(&b, false)
	return b.String()
}

// String renders the table in nft syntax with, as comments, set sizes and
// the policies each policy and isolation chain comes from. Elements are
// counted, not listed.
func (r *Ruleset) String() string {
	var b strings.Builder
	r.writeTable(&b, true)
	return b.String()
}

func (r *Ruleset) writeTable(b *strings.Builder, annotated bool) {
	fmt.Fprintf(b, "table inet %s {\n", r.Table)
	// Sets first so rules can refer to them; verdict maps may name chains
	// declared further down, nft resolves those within the transaction.
	for _, name := range r.sortedSetNames() {
		s := r.sets[name]
		if annotated {
			// One line per set, its size and comment above it.
			fmt.Fprintf(b, "\t# %d elements", s.elems.len())
			if s.comment != "" {
				fmt.Fprintf(b, ": %s", s.comment)
			}
			fmt.Fprintf(b, "\n\t%s %s { %s }\n", setKeyword(s.kind), s.name, s.kind)
			continue
		}
		fmt.Fprintf(b, "\t%s %s {\n\t\t%s\n", setKeyword(s.kind), s.name, s.kind)
		if s.comment != "" {
			fmt.Fprintf(b, "\t\tcomment %s;\n", quoteNft(s.comment))
		}
		writeElements(b, s)
		b.WriteString("\t}\n")
	}
	for _, name := range r.sortedChainNames() {
		c := r.chains[name]
		if annotated && c.audit != "" {
			fmt.Fprintf(b, "\t# audit mode: what %s would deny (%s) is counted and logged, then accepted\n", c.audit, c.dir)
		} else if annotated && c.tier != 0 {
			fmt.Fprintf(b, "\t# ClusterNetworkPolicy %s tier: %s (%s)", c.tier, strings.Join(c.policies, ", "), c.dir)
			if c.next != "" {
				fmt.Fprintf(b, ", then %s", c.next)
			}
			b.WriteString("\n")
		} else if annotated && c.next != "" {
			fmt.Fprintf(b, "\t# ClusterNetworkPolicy Admin tier, then the next tier: %s (%s)\n", c.next, c.dir)
		} else if annotated && len(c.policies) > 0 {
			what := "allows of"
			if c.isolates {
				what = "isolation by"
			}
			dir := c.dir.String()
			if c.lookups > 0 {
				dir += fmt.Sprintf("; %d lookup maps", c.lookups)
			}
			fmt.Fprintf(b, "\t# %s %s (%s)\n", what, strings.Join(c.policies, ", "), dir)
		}
		fmt.Fprintf(b, "\tchain %s {\n", name)
		if c.hook != hookNone {
			fmt.Fprintf(b, "\t\t%s\n", baseChainText(c))
		}
		for i := range c.rules {
			fmt.Fprintf(b, "\t\t%s\n", c.rules[i].String())
		}
		b.WriteString("\t}\n")
	}
	b.WriteString("}\n")
}

func setKeyword(k setKind) string {
	if k.vmap() {
		return "map"
	}
	return "set"
}

func baseChainText(c *chainSpec) string {
	return fmt.Sprintf("type %s hook %s priority %d; policy %s;", c.typ, c.hook, c.prio, c.policy)
}

func writeElements(b *strings.Builder, s *setSpec) {
	// nft rejects an empty element list, so an empty set has none.
	if s.elems.len() == 0 {
		return
	}
	b.WriteString("\t\telements = {")
	for i, k := range s.sortedKeys() {
		switch {
		case i%elemsPerLine == 0:
			if i > 0 {
				b.WriteString(",")
			}
			b.WriteString("\n\t\t\t")
		default:
			b.WriteString(", ")
		}
		b.WriteString(elementText(s.kind, k, s.elems.get(k)))
	}
	b.WriteString("\n\t\t}\n")
}

// elementText renders one element key (laid out as in setSpec.elems) and,
// for a verdict map, its jump target in nft syntax.
func elementText(kind setKind, key, value string) string {
	addrLen := kind.addrLen()
	addr := func(k string) string {
		a, _ := netip.AddrFromSlice([]byte(k))
		return a.String()
	}
	if len(key) != kind.keyLen() {
		return fmt.Sprintf("0x%x", key)
	}
	if kind.vmap() && value != "" {
		return elementText(kind, key, "") + " : jump " + value
	}
	switch {
	case kind.interval():
		first, last := key[:addrLen], key[addrLen:]
		if first == last {
			return addr(first)
		}
		// Spaces around the dash: IPv6 addresses end in ':' ("fd00::"),
		// which must not run into the range operator.
		return addr(first) + " - " + addr(last)
	case kind.ports() || kind == kindServices:
		// portKey: address, protocol and port each padded to 4 bytes;
		// serviceKey: the same without the address. The protocol goes by
		// number, which nft's inet_proto type accepts for any protocol,
		// named or not.
		proto := key[addrLen]
		port := uint16(key[addrLen+4])<<8 | uint16(key[addrLen+5])
		if kind == kindServices {
			return fmt.Sprintf("%d . %d", proto, port)
		}
		return fmt.Sprintf("%s . %d . %d", addr(key[:addrLen]), proto, port)
	}
	return addr(key)
}

// quoteNft quotes a string for nft: its lexer knows no escapes, so a double
// quote inside cannot be expressed and becomes a single one.
func quoteNft(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `'`) + `"`
}
