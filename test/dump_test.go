package test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

// dumpBaseTable is a table shaped like ours (a base chain with the
// established rule, a peer set) for `nftpol dump` to read; each case adds
// one rule to its chain.
const dumpBaseTable = `table inet nftpol {
	set a-peers-v4 {
		type ipv4_addr
		elements = { 10.244.1.2 }
	}
	chain forward-ingress {
		type filter hook forward priority filter + 1; policy accept;
		ct state established,related accept
	}
}
`

// TestDumpShowsRulesItDidNotWrite: `nftpol dump --netns` reads whatever
// the kernel holds in our table, including rules someone else put there.
// It must exit 0 and show such a rule (its output differs from the dump
// of the same table without it, by one line), and it must not print two
// rules, or two base chains, that decide differently as the same text.
func TestDumpShowsRulesItDidNotWrite(t *testing.T) {
	kerneltest.Require(t, kerneltest.NftBinary)
	bin, err := testbed.AgentBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		rule string
		// plain, when set, is a rule the dump must print otherwise than
		// rule: it differs from rule in one operator or field only.
		plain string
		// hook, when set, replaces the base chain's hook line.
		hook string
	}{
		{name: "icmp-type-match", rule: "icmp type echo-request accept"},
		{name: "tcp-flags-match", rule: "tcp flags syn accept"},
		{name: "prefix-match", rule: "ip saddr 10.0.0.0/8 accept"},
		{name: "meta-mark-match", rule: "meta mark 0x1 accept"},
		{name: "l4proto-accept", rule: "meta l4proto tcp accept"},
		{name: "inverted-lookup", rule: "ip saddr != @a-peers-v4 accept", plain: "ip saddr @a-peers-v4 accept"},
		{name: "source-port", rule: "tcp sport 80 accept", plain: "tcp dport 80 accept"},
		{name: "ct-state-new", rule: "ct state new,established,related accept", plain: "ct state established,related accept"},
		{name: "port-not-equal", rule: "tcp dport != 80 accept", plain: "tcp dport 80 accept"},
		{name: "base-chain-policy-drop", hook: "type filter hook forward priority filter + 1; policy drop;"},
		{name: "base-chain-priority", hook: "type filter hook forward priority filter + 50; policy accept;"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := kerneltest.Netns(t, e2ePrefix+"dump")
			load := func(rule, hook string) {
				t.Helper()
				path := filepath.Join(t.TempDir(), "table.nft")
				// Created if missing, then replaced, in one transaction.
				text := "table inet nftpol\ndelete table inet nftpol\n" + dumpBaseTable
				if hook != "" {
					text = strings.Replace(text, "type filter hook forward priority filter + 1; policy accept;", hook, 1)
				}
				if rule != "" {
					text = strings.Replace(text, "\t\tct state established,related accept\n",
						"\t\tct state established,related accept\n\t\t"+rule+"\n", 1)
				}
				if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
					t.Fatal(err)
				}
				kerneltest.Nft(t, ns, "-f", path)
			}
			load("", "")
			base := runDump(t, bin, ns)
			load(tc.rule, tc.hook)
			got := runDump(t, bin, ns)
			if got == base && tc.rule != "" {
				t.Fatalf("the dump does not show the rule %q at all:\n%s", tc.rule, got)
			}
			if got == base {
				t.Fatalf("the dump prints the base chain with %q as with the committed hook line:\n%s", tc.hook, got)
			}
			if n, m := strings.Count(got, "\n"), strings.Count(base, "\n"); tc.rule != "" && n != m+1 {
				t.Errorf("the dump with the rule %q has %d lines, want %d (one more than without it):\n%s", tc.rule, n, m+1, got)
			}
			if tc.plain != "" {
				load(tc.plain, "")
				if plain := runDump(t, bin, ns); plain == got {
					t.Errorf("the dump prints %q and %q the same way, though they decide differently:\n%s", tc.rule, tc.plain, got)
				}
			}
		})
	}
}

// runDump runs `nftpol dump --netns` (at most 30 s) and returns its
// output; a non-zero exit or a panic fails the test.
func runDump(t *testing.T, bin, netnsPath string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "dump", "--netns", netnsPath)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if strings.Contains(stderr.String(), "panic") {
		t.Fatalf("nftpol dump panicked:\n%s", stderr.String())
	}
	if err != nil {
		t.Fatalf("nftpol dump: %v (want exit 0)\nstderr: %s\nstdout: %s", err, stderr.String(), stdout.String())
	}
	return stdout.String()
}
