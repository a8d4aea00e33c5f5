package testbed

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Proto is a probe's transport.
type Proto string

// The transports a probe can use.
const (
	TCP Proto = "TCP"
	UDP Proto = "UDP"
)

// Probe connects from a pod to an address and port and checks that the
// answer names the expected pod (or any pod when want is ""). nil means
// reached.
func Probe(from *Pod, to netip.Addr, proto Proto, port int, want string, timeout time.Duration) error {
	return ProbeFromPort(from, 0, to, proto, port, want, timeout)
}

// ProbeFromPort is Probe from a fixed source port (0: any). It lets a test
// send what a rule matching the wrong port field (sport for dport) would
// let through. The port must be one the pod does not listen on.
func ProbeFromPort(from *Pod, srcPort int, to netip.Addr, proto Proto, port int, want string, timeout time.Duration) error {
	addr := net.JoinHostPort(to.String(), strconv.Itoa(port))
	var answer string
	err := inNetns(from.NetNSPath, func() error {
		deadline := time.Now().Add(timeout)
		d := net.Dialer{Timeout: timeout, Control: reuseAddr}
		switch proto {
		case TCP:
			if srcPort != 0 {
				d.LocalAddr = &net.TCPAddr{Port: srcPort}
			}
			c, err := d.Dial("tcp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(deadline)
			buf := make([]byte, 256)
			n, err := c.Read(buf)
			if err != nil {
				return fmt.Errorf("reading the answer: %w", err)
			}
			answer = strings.TrimSpace(string(buf[:n]))
		case UDP:
			if srcPort != 0 {
				d.LocalAddr = &net.UDPAddr{Port: srcPort}
			}
			c, err := d.Dial("udp", addr)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(deadline)
			if _, err := c.Write([]byte("probe")); err != nil {
				return err
			}
			buf := make([]byte, 256)
			n, err := c.Read(buf)
			if err != nil {
				return err
			}
			answer = string(buf[:n])
		default:
			return fmt.Errorf("unknown protocol %q", proto)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if want != "" && answer != want {
		return fmt.Errorf("reached %q, want %q", answer, want)
	}
	return nil
}

// reuseAddr lets probes from a fixed source port follow each other while
// the last connection from that port lingers in TIME_WAIT.
func reuseAddr(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	})
	if err != nil {
		return err
	}
	return serr
}

// ProbeSpec is one matrix to measure.
type ProbeSpec struct {
	Family  int // 4 or 6
	Proto   Proto
	Port    int
	Timeout time.Duration
}

func (s ProbeSpec) String() string { return fmt.Sprintf("%s/%d IPv%d", s.Proto, s.Port, s.Family) }

// ProbeMatrix probes every pair of pods (a pod to itself included) with at
// most parallel probes in flight, and returns what was reachable.
func ProbeMatrix(ctx context.Context, pods []*Pod, spec ProbeSpec, parallel int) *Matrix {
	if parallel <= 0 {
		parallel = 32
	}
	keys := make([]string, len(pods))
	for i, p := range pods {
		keys[i] = p.Key()
	}
	m := NewMatrix(keys, false)
	sem := make(chan struct{}, parallel)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, from := range pods {
		for _, to := range pods {
			if ctx.Err() != nil {
				break
			}
			sem <- struct{}{}
			wg.Add(1)
			go func(from, to *Pod) {
				defer wg.Done()
				defer func() { <-sem }()
				err := Probe(from, to.Addr(spec.Family), spec.Proto, spec.Port, to.Key(), spec.Timeout)
				mu.Lock()
				m.Set(from.Key(), to.Key(), err == nil)
				mu.Unlock()
			}(from, to)
		}
	}
	wg.Wait()
	return m
}
