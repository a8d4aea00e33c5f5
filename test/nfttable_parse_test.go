package test

import (
	"strings"
	"testing"
)

// listingA is nft's layout of a small table; listingB is the same content
// listed in another order (objects and elements), as after a re-creation.
const listingA = `table inet nftpol {
	set a-1-v4 {
		type ipv4_addr
		elements = { 10.244.1.2, 10.244.2.3,
			     10.244.1.4 }
	}

	map ingress_v4 {
		type ipv4_addr : verdict
		elements = { 10.244.1.1 : jump iso-in-1 }
	}

	chain iso-in-1 {
		jump pol-1-in
		counter reject with icmpx admin-prohibited comment "deny ingress"
	}

	chain pol-1-in {
		ip saddr @a-1-v4 tcp dport 80 counter accept comment "x/p ingress[0]"
	}
}
`

const listingB = `table inet nftpol {
	chain pol-1-in {
		ip saddr @a-1-v4 tcp dport 80 counter accept comment "x/p ingress[0]"
	}

	chain iso-in-1 {
		jump pol-1-in
		counter reject with icmpx admin-prohibited comment "deny ingress"
	}

	map ingress_v4 {
		type ipv4_addr : verdict
		elements = { 10.244.1.1 : jump iso-in-1 }
	}

	set a-1-v4 {
		type ipv4_addr
		elements = { 10.244.1.4, 10.244.1.2, 10.244.2.3 }
	}
}
`

func mustCanonical(t *testing.T, listing string) string {
	t.Helper()
	table, err := parseNftTable(listing)
	if err != nil {
		t.Fatalf("parsing: %v", err)
	}
	return table.canonical()
}

// TestNftListingComparison checks the oracle of the tamper tests: order
// does not matter, every change that decides otherwise does.
func TestNftListingComparison(t *testing.T) {
	base := mustCanonical(t, listingA)
	if got := mustCanonical(t, listingB); got != base {
		t.Fatalf("the same table in another order compares different:\n%s", lineDiff(base, got))
	}
	for _, tc := range []struct{ name, old, new, diff string }{
		{"element added", "10.244.1.4 }", "10.244.1.4, 10.244.1.9 }", "+ set a-1-v4: element 10.244.1.9"},
		{"element removed", "10.244.2.3,", "", "- set a-1-v4: element 10.244.2.3"},
		{"verdict retargeted", "jump iso-in-1 }", "jump pol-1-in }", "+ map ingress_v4: element 10.244.1.1 : jump pol-1-in"},
		{"lookup inverted", "ip saddr @a-1-v4", "ip saddr != @a-1-v4", "+ chain pol-1-in: ip saddr != @a-1-v4"},
		{"set flags", "\t\ttype ipv4_addr\n\t\telements", "\t\ttype ipv4_addr\n\t\tflags interval\n\t\telements", "+ set a-1-v4: flags interval"},
		{"rules reordered", "\t\tjump pol-1-in\n\t\tcounter reject with icmpx admin-prohibited comment \"deny ingress\"\n",
			"\t\tcounter reject with icmpx admin-prohibited comment \"deny ingress\"\n\t\tjump pol-1-in\n", "same lines in another order"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			changed := strings.Replace(listingA, tc.old, tc.new, 1)
			if changed == listingA {
				t.Fatalf("test bug: %q not in the listing", tc.old)
			}
			got := mustCanonical(t, changed)
			if got == base {
				t.Fatal("the change compares equal")
			}
			if d := lineDiff(base, got); !strings.Contains(d, tc.diff) {
				t.Errorf("the difference does not name %q:\n%s", tc.diff, d)
			}
		})
	}
	table, _ := parseNftTable(listingA)
	if name, err := table.chainWith(`comment "x/p ingress[0]"`); err != nil || name != "pol-1-in" {
		t.Errorf("chainWith = %q, %v", name, err)
	}
	if name, err := table.setWithElements([]string{"10.244.2.3", "10.244.1.2", "10.244.1.4"}, "type ipv4_addr"); err != nil || name != "a-1-v4" {
		t.Errorf("setWithElements = %q, %v", name, err)
	}
	if _, err := parseNftTable("table inet nftpol {\n\tset s {\n\t\telements = { 1.2.3.4,\n"); err == nil {
		t.Error("a truncated listing parses")
	}
}
