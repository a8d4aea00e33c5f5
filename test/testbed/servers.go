package testbed

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
)

// servers are the TCP and UDP listeners of one pod. Each answers with the
// pod's key, so a probe knows it reached the right pod.
type servers struct {
	closeOnce sync.Once
	closers   []func() error
	wg        sync.WaitGroup
}

// startServers listens on ports of every address of the namespace, or
// only on hosts when given: a UDP answer leaves from the address the
// socket is bound to, or else from the one the route picks, which on a
// node with several addresses may not be the one asked (and a connected
// client ignores it).
func startServers(netnsPath, identity string, ports []int, hosts ...string) (*servers, error) {
	s := &servers{}
	var tcp []net.Listener
	var udp []net.PacketConn
	if len(hosts) == 0 {
		hosts = []string{""} // ":port" listens on IPv4 and IPv6 alike
	}
	err := inNetns(netnsPath, func() error {
		for _, h := range hosts {
			for _, p := range ports {
				addr := net.JoinHostPort(h, fmt.Sprint(p))
				l, err := net.Listen("tcp", addr)
				if err != nil {
					return fmt.Errorf("listening on tcp %s: %w", addr, err)
				}
				tcp = append(tcp, l)
				u, err := net.ListenPacket("udp", addr)
				if err != nil {
					return fmt.Errorf("listening on udp %s: %w", addr, err)
				}
				udp = append(udp, u)
			}
		}
		return nil
	})
	for _, l := range tcp {
		s.closers = append(s.closers, l.Close)
		s.wg.Add(1)
		go s.serveTCP(l, identity)
	}
	for _, u := range udp {
		s.closers = append(s.closers, u.Close)
		s.wg.Add(1)
		go s.serveUDP(u, identity)
	}
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

func (s *servers) serveTCP(l net.Listener, identity string) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = c.Write([]byte(identity + "\n"))
		_ = c.Close()
	}
}

func (s *servers) serveUDP(u net.PacketConn, identity string) {
	defer s.wg.Done()
	buf := make([]byte, 512)
	for {
		_, from, err := u.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = u.WriteTo([]byte(identity), from)
	}
}

// close stops every listener and waits for the serving goroutines.
func (s *servers) close() {
	s.closeOnce.Do(func() {
		for _, c := range s.closers {
			_ = c()
		}
		s.wg.Wait()
	})
}
