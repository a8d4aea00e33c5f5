package test

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/test/testbed"
)

// Raw sockets inside the testbed's namespaces, for packets the TCP and UDP
// probes cannot send.

// sendRawIPv4 sends payload n times to each destination from a raw IPv4
// socket of the given IP protocol in a namespace (the kernel writes the
// IP header, with the pod's address as source).
func sendRawIPv4(netnsPath string, proto int, payload []byte, dsts []netip.Addr, n int) error {
	return testbed.InNetns(netnsPath, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("raw socket for protocol %d: %w", proto, err)
		}
		defer unix.Close(fd)
		for _, dst := range dsts {
			for i := 0; i < n; i++ {
				if err := unix.Sendto(fd, payload, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
					return fmt.Errorf("sending protocol %d to %s: %w", proto, dst, err)
				}
			}
		}
		return nil
	})
}

// rawListener receives every IPv4 packet of one IP protocol delivered to
// the namespace it was opened in.
type rawListener struct{ fd int }

func listenRawIPv4(netnsPath string, proto int) (*rawListener, error) {
	var fd int
	err := testbed.InNetns(netnsPath, func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return fmt.Errorf("raw socket for protocol %d: %w", proto, err)
		}
		// Reads return at least every 100 ms, so count stays bounded.
		tv := unix.Timeval{Usec: 100_000}
		return unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	})
	if err != nil {
		if fd > 0 {
			unix.Close(fd)
		}
		return nil, err
	}
	return &rawListener{fd: fd}, nil
}

func (l *rawListener) close() { unix.Close(l.fd) }

// count reads for d (at most limit+50 reads or timeouts) and counts the
// packets from src whose payload carries marker.
func (l *rawListener) count(src netip.Addr, marker []byte, d time.Duration, limit int) int {
	n := 0
	buf := make([]byte, 2048)
	deadline := time.Now().Add(d)
	for i := 0; i < limit+50 && time.Now().Before(deadline); i++ {
		m, _, err := unix.Recvfrom(l.fd, buf, 0)
		if err != nil {
			continue // timeout: look at the clock again
		}
		pkt := buf[:m]
		if len(pkt) < 20 {
			continue
		}
		ihl := int(pkt[0]&0x0f) * 4
		from, _ := netip.AddrFromSlice(pkt[12:16])
		if from == src && ihl <= len(pkt) && bytes.Contains(pkt[ihl:], marker) {
			n++
		}
	}
	return n
}

// icmpProbe is the hole protocol for an ICMP echo: a ping, not a port.
const icmpProbe testbed.Proto = "ICMP"

// pingIPv4 sends one ICMP echo request from a pod's namespace to dst and
// waits at most timeout (and 50 reads) for the matching echo reply.
func pingIPv4(from *testbed.Pod, dst netip.Addr, timeout time.Duration) error {
	return testbed.InNetns(from.NetNSPath, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_ICMP)
		if err != nil {
			return fmt.Errorf("raw ICMP socket: %w", err)
		}
		defer unix.Close(fd)
		tv := unix.Timeval{Usec: 50_000}
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		var idSeq [4]byte
		_, _ = rand.Read(idSeq[:])
		req := append([]byte{8, 0, 0, 0}, idSeq[:]...)
		req = append(req, []byte("nftpol-tamper-ping")...)
		binary.BigEndian.PutUint16(req[2:], icmpChecksum(req))
		if err := unix.Sendto(fd, req, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
			return fmt.Errorf("sending the echo request: %w", err)
		}
		buf := make([]byte, 1500)
		deadline := time.Now().Add(timeout)
		for i := 0; i < 50 && time.Now().Before(deadline); i++ {
			n, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil || n < 20 {
				continue
			}
			ihl := int(buf[0]&0x0f) * 4
			if ihl+8 > n {
				continue
			}
			src, _ := netip.AddrFromSlice(buf[12:16])
			icmp := buf[ihl:n]
			if src == dst && icmp[0] == 0 && bytes.Equal(icmp[4:8], idSeq[:]) {
				return nil
			}
		}
		return fmt.Errorf("no echo reply from %s within %s", dst, timeout)
	})
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
