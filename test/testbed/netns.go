package testbed

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/test/kerneltest"
)

// ip runs the ip command; errors carry its output.
func ip(args ...string) error { return kerneltest.IP(args...) }

// setSysctl writes a sysctl inside a network namespace: /proc/sys/net
// shows the namespace of the thread that opens it.
func setSysctl(netnsPath, key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return inNetns(netnsPath, func() error {
		return os.WriteFile(path, []byte(value), 0o644)
	})
}

func netnsPath(name string) string { return filepath.Join(kerneltest.NetnsDir, name) }

// InNetns runs fn on an OS thread that has entered the network namespace
// at path (a Node's or Pod's NetNSPath), for tests that need sockets of
// their own there (raw sockets, fixed source ports). Sockets fn creates
// stay in that namespace; they may be used from any goroutine afterwards.
func InNetns(path string, fn func() error) error { return inNetns(path, fn) }

// inNetns runs fn on an OS thread that has entered the network namespace.
// Sockets fn creates stay in that namespace for their whole life. The
// thread is never unlocked, so the Go runtime discards it afterwards
// instead of reusing it in the wrong namespace.
func inNetns(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open(path)
		if err != nil {
			errc <- fmt.Errorf("opening network namespace: %w", err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering network namespace %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// killAgentsWithPrefix kills leftover agent processes of an earlier run,
// recognized by a --netns argument under our prefix.
func killAgentsWithPrefix(prefix string) {
	procs, _ := os.ReadDir("/proc")
	marker := []byte(kerneltest.NetnsDir + "/" + prefix + "-")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, marker) {
			continue
		}
		var pid int
		if _, err := fmt.Sscan(p.Name(), &pid); err == nil && pid != os.Getpid() {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
	}
}
