package netnskubelet

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/nftpol/nftpol/test/kerneltest"

	"golang.org/x/sys/unix"
)

// NetnsDir is where `ip netns` keeps named network namespaces.
const NetnsDir = "/run/netns"

// runIP runs the ip command; errors carry its output.
func runIP(args ...string) error { return kerneltest.IP(args...) }

// onThreadIn runs fn on an OS thread that has entered the network namespace
// at netnsPath ("" keeps the current one) and, when hostname is not empty,
// a fresh UTS namespace with that hostname. Sockets fn opens and processes
// it starts keep those namespaces for their whole life: a child inherits
// the namespaces of the thread that forks it. The thread is never
// unlocked, so the Go runtime discards it afterwards instead of running
// other goroutines in the wrong namespaces.
func onThreadIn(netnsPath, hostname string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if netnsPath != "" {
			f, err := os.Open(netnsPath)
			if err != nil {
				errc <- fmt.Errorf("opening network namespace: %w", err)
				return
			}
			err = unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
			f.Close()
			if err != nil {
				errc <- fmt.Errorf("entering network namespace %s: %w", netnsPath, err)
				return
			}
		}
		if hostname != "" {
			if err := unix.Unshare(unix.CLONE_NEWUTS); err != nil {
				errc <- fmt.Errorf("creating a UTS namespace: %w", err)
				return
			}
			if err := unix.Sethostname([]byte(hostname)); err != nil {
				errc <- fmt.Errorf("setting hostname %q: %w", hostname, err)
				return
			}
		}
		errc <- fn()
	}()
	return <-errc
}

// DialIn dials address from inside the network namespace at netnsPath.
func DialIn(ctx context.Context, netnsPath, network, address string, timeout time.Duration) (net.Conn, error) {
	var conn net.Conn
	err := onThreadIn(netnsPath, "", func() error {
		d := net.Dialer{Timeout: timeout}
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	return conn, err
}

// ListenIn opens a TCP listener inside the network namespace at netnsPath.
func ListenIn(netnsPath, address string) (net.Listener, error) {
	var l net.Listener
	err := onThreadIn(netnsPath, "", func() error {
		var err error
		l, err = net.Listen("tcp", address)
		return err
	})
	return l, err
}

// netnsInode returns the inode that identifies a network namespace.
func netnsInode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// KillProcessesIn sends SIGKILL to every process whose network namespace is
// the one at netnsPath, and returns how many there were. Deleting a
// namespace's name does not stop what runs inside it, so this is how
// leftovers of a crashed run, and exec sessions still open when a pod goes,
// are stopped.
func KillProcessesIn(netnsPath string) int {
	ino, err := netnsInode(netnsPath)
	if err != nil {
		return 0
	}
	self := os.Getpid()
	killed := 0
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc", p.Name(), "ns", "net"), &st) != nil || st.Ino != ino {
			continue
		}
		if unix.Kill(pid, unix.SIGKILL) == nil {
			killed++
		}
	}
	return killed
}

// SetSysctlIn writes a sysctl inside a network namespace: /proc/sys/net
// shows the namespace of the thread that opens it.
func SetSysctlIn(netnsPath, key, value string) error {
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	return onThreadIn(netnsPath, "", func() error {
		return os.WriteFile(path, []byte(value), 0o644)
	})
}
