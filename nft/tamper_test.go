package nft

import (
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVerifyDetectsEveryTampering loads our table changed in one way, as
// an operator or another program could, and checks that Verify reports
// drift and that the next commit (a full replace, as the agent does after
// drift) restores exactly the committed table. Each tampering is applied
// to the table's own `nft -f` text, which loads as the same table when
// unchanged (TestNftTextLoadsAsTheSameTable), or with nft commands.
func TestVerifyDetectsEveryTampering(t *testing.T) {
	ns := testNetns(t)
	m := everyKindModel()
	e := newTestEnforcer(t, ns, DenyDrop)
	replace := func(old, new string) func(string) string {
		return func(text string) string {
			if !strings.Contains(text, old) {
				t.Fatalf("the table text lacks %q", old)
			}
			return strings.Replace(text, old, new, 1)
		}
	}
	isoIn := isolationChainName([]string{"x/p1", "x/p2"}, 0)
	isoEg := isolationChainName([]string{"x/p2"}, 1)
	for _, tc := range []struct {
		name string
		text func(string) string // a changed table text, or
		cmds string              // nft commands run on the table
	}{
		{name: "ct state widened", text: replace("ct state established,related accept", "ct state new,established,related accept")},
		{name: "lookup inverted", text: replace("ip saddr @"+addrSetName("pods-b", 4)+" tcp dport 80", "ip saddr != @"+addrSetName("pods-b", 4)+" tcp dport 80")},
		{name: "sport for dport", text: replace("ip saddr @"+addrSetName("pods-b", 4)+" tcp dport 80", "ip saddr @"+addrSetName("pods-b", 4)+" tcp sport 80")},
		{name: "base chain policy drop", text: replace("type filter hook forward priority 1; policy accept;", "type filter hook forward priority 1; policy drop;")},
		{name: "base chain priority", text: replace("type filter hook forward priority 1; policy accept;", "type filter hook forward priority 5; policy accept;")},
		{name: "base chain hook", text: replace("type filter hook input priority 0; policy accept;", "type filter hook output priority 0; policy accept;")},
		{name: "foreign rule in our chain", text: replace("chain "+isoIn+" {\n", "chain "+isoIn+" {\n\t\tmeta l4proto tcp accept\n")},
		{name: "icmp accept in our chain", text: replace("chain "+isoIn+" {\n", "chain "+isoIn+" {\n\t\ticmp type echo-request accept\n")},
		{name: "rules reordered", text: replace("\t\tjump pol-"+shortHash("x/p1")+"-in\n\t\tjump pol-"+shortHash("x/p2")+"-in\n", "\t\tjump pol-"+shortHash("x/p2")+"-in\n\t\tjump pol-"+shortHash("x/p1")+"-in\n")},
		{name: "counter dropped from a deny", text: replace("counter drop comment \"deny ingress\"", "drop comment \"deny ingress\"")},
		{name: "comment changed", text: replace("comment \"x/p1 ingress[0]\"", "comment \"x/p9 ingress[0]\"")},
		{name: "set flags changed", text: replace("set "+addrSetName("pods-b", 4)+" {\n\t\ttype ipv4_addr;\n", "set "+addrSetName("pods-b", 4)+" {\n\t\ttype ipv4_addr; flags interval;\n")},
		{name: "set with a timeout", text: replace("set "+addrSetName("pods-b", 4)+" {\n\t\ttype ipv4_addr;\n", "set "+addrSetName("pods-b", 4)+" {\n\t\ttype ipv4_addr; flags timeout;\n")},
		{name: "element added to a peer set", cmds: "add element inet nftpol " + addrSetName("pods-b", 4) + " { 192.0.2.1 }"},
		{name: "element removed from a peer set", cmds: "delete element inet nftpol " + addrSetName("pods-b", 4) + " { 10.0.1.1 }"},
		{name: "interval widened", cmds: "delete element inet nftpol " + addrSetName("mixed", 4) + " { 10.6.0.0-10.6.0.9 }\nadd element inet nftpol " + addrSetName("mixed", 4) + " { 10.6.0.0-10.6.0.10 }"},
		{name: "verdict map element to another chain", cmds: "delete element inet nftpol ingress_v4 { 10.0.0.1 }\nadd element inet nftpol ingress_v4 { 10.0.0.1 : jump " + isoEg + " }"},
		{name: "verdict map element to accept", cmds: "delete element inet nftpol ingress_v4 { 10.0.0.1 }\nadd element inet nftpol ingress_v4 { 10.0.0.1 : accept }"},
		{name: "named-port element changed", cmds: "delete element inet nftpol " + portSetName("named", 4) + " { 10.0.0.1 . 6 . 8080 }\nadd element inet nftpol " + portSetName("named", 4) + " { 10.0.0.1 . 6 . 8081 }"},
		{name: "chain added", cmds: "add chain inet nftpol extra"},
		{name: "set added", cmds: "add set inet nftpol extra { type ipv4_addr; }"},
		{name: "rule appended to a base chain", cmds: "add rule inet nftpol forward-ingress accept"},
		{name: "CNP pass turned into accept", text: replace("counter return comment", "counter accept comment")},
		{name: "CNP goto turned into jump", text: replace("\t\tgoto "+isoIn+"\n", "\t\tjump "+isoIn+"\n")},
		{name: "CNP deny turned into accept", text: replace("counter drop comment \"cnp:admin-deny ingress[0]:no-cidr\"", "counter accept comment \"cnp:admin-deny ingress[0]:no-cidr\"")},
		{name: "CNP rule comment renamed", text: replace("comment \"cnp:baseline-default-deny ingress[1]\"", "comment \"cnp:other ingress[1]\"")},
		{name: "CNP rule without its counter", text: replace("counter accept comment \"cnp:baseline-default-deny ingress[0]:pass-b\"", "accept comment \"cnp:baseline-default-deny ingress[0]:pass-b\"")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e.Invalidate()
			if _, err := e.Sync(m); err != nil {
				t.Fatalf("commit: %v", err)
			}
			if err := e.Verify(); err != nil {
				t.Fatalf("before tampering: %v", err)
			}
			script := tc.cmds
			if tc.text != nil {
				script = tc.text(e.Committed().NftText())
			}
			file := filepath.Join(t.TempDir(), "tamper.nft")
			if err := os.WriteFile(file, []byte(script+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			nftIn(t, ns, "-f", file)
			err := e.Verify()
			if !errors.Is(err, ErrDrift) {
				t.Fatalf("Verify after the tampering: %v, want drift", err)
			}
			t.Logf("detected: %v", err)
			e.Invalidate()
			if _, err := e.Sync(m); err != nil {
				t.Fatalf("repair: %v", err)
			}
			if err := e.Verify(); err != nil {
				t.Fatalf("after the repair: %v", err)
			}
		})
	}
}

// TestPlanTextIsTheTransaction loads a table, then the text of the plan
// to the next one with `nft -f`: the kernel must then hold exactly the
// next table. So Plan.String, which the agent logs at high verbosity, is
// the transaction it commits, not a description of it.
func TestPlanTextIsTheTransaction(t *testing.T) {
	ns := testNetns(t)
	e := newTestEnforcer(t, ns, DenyDrop)
	r := rand.New(rand.NewSource(11))
	prev := Compile(everyKindModel(), Config{})
	load := func(text string) {
		t.Helper()
		file := filepath.Join(t.TempDir(), "plan.nft")
		if err := os.WriteFile(file, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		nftIn(t, ns, "-f", file)
	}
	load(prev.NftText())
	// advance loads the plan from prev to next and demands next in the
	// kernel.
	advance := func(what string, next *Ruleset) {
		t.Helper()
		plan := Diff(prev, next)
		load(plan.String())
		e.mu.Lock()
		e.committed = next
		e.mu.Unlock()
		if err := e.Verify(); err != nil {
			t.Fatalf("%s: after loading the plan\n%s\n%v", what, plan, err)
		}
		prev = next
	}
	for step := 0; step < 25; step++ {
		next := Compile(randomModel(r), Config{})
		if plan := Diff(prev, next); !plan.Empty() {
			advance(fmt.Sprintf("step %d", step), next)
		}
	}
	// The lookup layout (lookup.go): its maps appear, change element by
	// element (interval pieces split and join) and go.
	overlapping := rand.New(rand.NewSource(12))
	for step := 0; step < 12; step++ {
		m, _ := overlappingModel(overlapping)
		cfg := Config{LookupMinPolicies: 1}
		if step%4 == 3 {
			cfg = Config{}
		}
		advance(fmt.Sprintf("lookup step %d", step), Compile(m, cfg))
	}
}
