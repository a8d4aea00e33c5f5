package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestParseAgentFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     string
		wantErr string
	}{
		{"minimal", []string{"--node-name", "n1"}, "", ""},
		{"node from env", nil, "n1", ""},
		{"no node", nil, "", "--node-name"},
		{"bad deny action", []string{"--node-name", "n1", "--deny-action", "shrug"}, "", "drop or reject"},
		{"stray argument", []string{"--node-name", "n1", "extra"}, "", "unexpected arguments"},
		{"unknown flag", []string{"--node-name", "n1", "--nope"}, "", "flag provided but not defined"},
		{"negative verify", []string{"--node-name", "n1", "--verify-interval", "-1s"}, "", "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NODE_NAME", tt.env)
			_, err := parseAgentFlags(tt.args, &bytes.Buffer{})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestUnknownCommand(t *testing.T) {
	err := run(context.Background(), []string{"frobnicate"}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("error = %v", err)
	}
}

// TestCleanupRemovesOnlyOurTable runs `nftpol cleanup` on a namespace
// holding our table and a foreign one.
func TestCleanupRemovesOnlyOurTable(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root under CI")
		}
		t.Skip("needs root to create a network namespace")
	}
	ns := "nftpol-main-cleanup"
	_ = exec.Command("ip", "netns", "delete", ns).Run()
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "delete", ns).Run() })
	nft := func(args ...string) string {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
		return string(out)
	}
	nft("add", "table", "inet", "nftpol")
	nft("add", "table", "inet", "foreign")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"cleanup", "--netns", "/run/netns/" + ns}, &out); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	tables := nft("list", "tables")
	if strings.Contains(tables, "nftpol") || !strings.Contains(tables, "foreign") {
		t.Fatalf("after cleanup: %s", tables)
	}
	// A second cleanup finds nothing to do and succeeds.
	if err := run(context.Background(), []string{"cleanup", "--netns", "/run/netns/" + ns}, &out); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}
}
