package nft

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/test/kerneltest"
)

func TestCheckCapEff(t *testing.T) {
	tests := []struct {
		name    string
		status  string
		wantErr string
	}{
		{"root", "Name:\tx\nCapEff:\t000001ffffffffff\n", ""},
		{"net admin only", "CapEff:\t0000000000001000\n", ""},
		{"no caps", "CapEff:\t0000000000000000\n", "CAP_NET_ADMIN"},
		{"other caps", "CapEff:\t0000000000000fff\n", "CAP_NET_ADMIN"},
		{"garbage", "CapEff:\tzz\n", "parsing CapEff"},
		{"missing", "Name:\tx\n", "no CapEff"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkCapEff(strings.NewReader(tt.status))
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestClassifyNFTablesError(t *testing.T) {
	// The errors as the netlink library returns them: an OpError around
	// the errno, sometimes inside a SyscallError.
	opErr := func(op string, errno unix.Errno) error { return &netlink.OpError{Op: op, Err: errno} }
	tests := []struct {
		name string
		err  error
		want string // "" means no error
	}{
		{"available", nil, ""},
		{"no netfilter netlink", &netlink.OpError{Op: "socket", Err: os.NewSyscallError("socket", unix.EPROTONOSUPPORT)}, "nftables: nf_tables is not available in this kernel"},
		{"no nf_tables subsystem", opErr("receive", unix.EINVAL), "nf_tables is not available"},
		{"no nf_tables subsystem in a batch", opErr("receive", unix.EOPNOTSUPP), "nf_tables is not available"},
		{"no capability", opErr("receive", unix.EPERM), "permission denied"},
		{"other", opErr("receive", unix.ENOBUFS), "probing nftables: "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := classifyNFTablesError(tt.err)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans lines: %q", err)
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("error %v does not wrap %v", err, tt.err)
			}
		})
	}
}

// TestCheckNFTables probes a namespace the test creates (this kernel has
// nf_tables) and one path that is no namespace.
func TestCheckNFTables(t *testing.T) {
	kerneltest.Require(t)
	ns := kerneltest.Netns(t, "nftpol-probe")
	if err := CheckNFTables(ns); err != nil {
		t.Fatalf("probe of a fresh namespace: %v", err)
	}
	if err := CheckNFTables(filepath.Join(t.TempDir(), "nope")); err == nil || !strings.Contains(err.Error(), "opening network namespace") {
		t.Fatalf("probe of a missing namespace: %v", err)
	}
}
