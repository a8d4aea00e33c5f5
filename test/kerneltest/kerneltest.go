// Package kerneltest is the one gate and helper for tests that need the
// kernel: root, the ip command, network namespaces of their own. Every
// package's kernel tests use it, so they agree on when a test may run, how
// it fails under CI, and how the namespaces it makes are named and removed.
//
// A test that cannot run skips with the reason, or fails with it when
// CI=true: CI must never pass by skipping.
package kerneltest

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Requirement is one thing a test needs from the machine.
type Requirement int

// The requirements a test can name besides root and iproute2, which every
// kernel test needs.
const (
	// ControlPlane: KUBEBUILDER_ASSETS holds kube-apiserver and etcd.
	ControlPlane Requirement = iota + 1
	// NftBinary: the nft command (Debian package nftables), for tests that
	// list or tamper with a table the way an operator would.
	NftBinary
)

// Unavailable returns why a kernel test cannot run here, or "".
func Unavailable(reqs ...Requirement) string {
	if os.Geteuid() != 0 {
		return "needs root to create network namespaces and program nftables"
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return "needs the ip command (Debian package iproute2)"
	}
	for _, r := range reqs {
		switch r {
		case ControlPlane:
			assets := os.Getenv("KUBEBUILDER_ASSETS")
			if assets == "" {
				return "needs KUBEBUILDER_ASSETS with kube-apiserver and etcd (make envtest-assets; make test sets it)"
			}
			for _, bin := range []string{"kube-apiserver", "etcd"} {
				if _, err := os.Stat(filepath.Join(assets, bin)); err != nil {
					return "KUBEBUILDER_ASSETS lacks " + bin + " (make envtest-assets)"
				}
			}
		case NftBinary:
			if _, err := exec.LookPath("nft"); err != nil {
				return "needs the nft command (Debian package nftables)"
			}
		}
	}
	return ""
}

// Require skips the test, or fails it under CI=true, when it cannot run.
func Require(t testing.TB, reqs ...Requirement) {
	t.Helper()
	if reason := Unavailable(reqs...); reason != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot run under CI=true: %s", reason)
		}
		t.Skip(reason)
	}
}

// NetnsDir is where `ip netns` keeps named network namespaces.
const NetnsDir = "/run/netns"

// cleaned remembers the prefixes whose leftovers this process removed.
var cleaned sync.Map

// RemoveLeftovers deletes the network namespaces named "<prefix>-..." that
// an earlier, crashed run left behind. Each prefix belongs to one test
// package, so this never touches another package's namespaces.
func RemoveLeftovers(prefix string) {
	entries, _ := os.ReadDir(NetnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			_ = exec.Command("ip", "netns", "delete", e.Name()).Run()
		}
	}
}

// Netns creates a network namespace "<prefix>-<random>" for one test and
// deletes it when the test ends, also on failure. The first call for a
// prefix in a process removes that prefix's leftovers. It returns the
// namespace's path under NetnsDir.
func Netns(t testing.TB, prefix string) string {
	t.Helper()
	Require(t)
	if _, done := cleaned.LoadOrStore(prefix, true); !done {
		RemoveLeftovers(prefix)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := prefix + "-" + hex.EncodeToString(b[:])
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "delete", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns delete %s: %v: %s", name, err, out)
		}
	})
	return filepath.Join(NetnsDir, name)
}

// Nft runs the nft command inside the network namespace at netnsPath and
// returns its output; a failure fails the test.
func Nft(t testing.TB, netnsPath string, args ...string) string {
	t.Helper()
	out, err := NftErr(netnsPath, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// NftErr is Nft that returns the error instead of failing the test.
func NftErr(netnsPath string, args ...string) (string, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", filepath.Base(netnsPath), "nft"}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("nft %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// IP runs the ip command (iproute2); the error carries its output.
func IP(args ...string) error {
	cmd := exec.Command("ip", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}
