package nft_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

// guardNetnsPrefix names this test's namespaces (not the package's
// nftpol-nft: its leftover cleanup must not meet another run's).
const guardNetnsPrefix = "nftpol-cni"

// guardTopology is a node with the table and two hosts on veths: pod, an
// address of the node's pod CIDR, and peer, outside it (a remote pod).
// The node also holds the pod CIDR's gateway address (as a bridge does).
type guardTopology struct {
	node, pod, peer string // namespace paths
}

var (
	guardCIDRs   = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:244::/64")}
	guardPodIPs  = [2]netip.Addr{netip.MustParseAddr("10.244.0.10"), netip.MustParseAddr("fd00:244::10")}
	guardGateway = [2]netip.Addr{netip.MustParseAddr("10.244.0.1"), netip.MustParseAddr("fd00:244::1")}
	guardPeerIPs = [2]netip.Addr{netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("fd00:9::2")}
	guardPeerGW  = [2]netip.Addr{netip.MustParseAddr("10.9.0.1"), netip.MustParseAddr("fd00:9::1")}
)

func newGuardTopology(t *testing.T) guardTopology {
	t.Helper()
	kerneltest.Require(t, kerneltest.NftBinary)
	g := guardTopology{
		node: kerneltest.Netns(t, guardNetnsPrefix),
		pod:  kerneltest.Netns(t, guardNetnsPrefix),
		peer: kerneltest.Netns(t, guardNetnsPrefix),
	}
	run := func(args ...string) {
		t.Helper()
		if err := kerneltest.IP(args...); err != nil {
			t.Fatal(err)
		}
	}
	name := filepath.Base
	for _, ns := range []string{g.node, g.pod, g.peer} {
		run("-n", name(ns), "link", "set", "lo", "up")
		// No duplicate address detection on the links to come: a
		// tentative link-local address delays the first neighbour
		// discovery, and with it the first IPv6 packets, by a second.
		if err := testbed.InNetns(ns, func() error { return writeProc("net/ipv6/conf/default/accept_dad", "0") }); err != nil {
			t.Fatal(err)
		}
	}
	for _, host := range []struct {
		ns      string
		ips, gw [2]netip.Addr
	}{{g.pod, guardPodIPs, guardGateway}, {g.peer, guardPeerIPs, guardPeerGW}} {
		// The veth goes with its namespaces.
		run("link", "add", "eth0", "netns", name(host.ns), "type", "veth", "peer", "name", "h-"+name(host.ns)[len(guardNetnsPrefix)+1:], "netns", name(g.node))
		hostSide := "h-" + name(host.ns)[len(guardNetnsPrefix)+1:]
		for f, bits := range []int{32, 128} {
			run("-n", name(host.ns), "addr", "add", fmt.Sprintf("%s/%d", host.ips[f], bits), "dev", "eth0", "nodad")
			run("-n", name(g.node), "addr", "add", fmt.Sprintf("%s/%d", host.gw[f], bits), "dev", hostSide, "nodad")
		}
		run("-n", name(host.ns), "link", "set", "eth0", "up")
		run("-n", name(g.node), "link", "set", hostSide, "up")
		for f := range 2 {
			run("-n", name(host.ns), "route", "add", host.gw[f].String(), "dev", "eth0")
			run("-n", name(host.ns), "route", "add", "default", "via", host.gw[f].String(), "dev", "eth0")
			run("-n", name(g.node), "route", "add", host.ips[f].String(), "dev", hostSide)
		}
	}
	for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := testbed.InNetns(g.node, func() error { return writeProc(key, "1") }); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

// serve accepts TCP connections on addr:port inside ns until the test
// ends, closing each at once.
func serve(t *testing.T, ns string, addr netip.Addr, port int) {
	t.Helper()
	var ln net.Listener
	err := testbed.InNetns(ns, func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
}

// connect reports how a TCP connection from ns to addr:port ends: "OK",
// "REFUSED" or "TIMEOUT" (within timeout).
func connect(ns string, addr netip.Addr, port int, timeout time.Duration) string {
	result := "ERROR"
	_ = testbed.InNetns(ns, func() error {
		c, err := net.DialTimeout("tcp", netip.AddrPortFrom(addr, uint16(port)).String(), timeout)
		var ne net.Error
		switch {
		case err == nil:
			c.Close()
			result = "OK"
		case errors.Is(err, syscall.ECONNREFUSED):
			result = "REFUSED"
		case errors.As(err, &ne) && ne.Timeout():
			result = "TIMEOUT"
		default:
			result = "ERROR " + err.Error()
		}
		return nil
	})
	return result
}

// TestPodAddrGuardPackets sends real TCP, IPv4 and IPv6, both ways
// between an address of the node's pod CIDR and a peer outside it: while
// the address is unknown nothing passes (the pod's own closed port does
// not even answer with a reset), the node's own gateway address in the
// pod CIDR keeps working, and the commit that makes the pod known — with
// its policy, here one that isolates its ingress from everything but
// port 80 — lets through exactly what that policy allows.
func TestPodAddrGuardPackets(t *testing.T) {
	g := newGuardTopology(t)
	node, err := nft.NewEnforcer(nft.Config{NetNSPath: g.node})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = node.Close() })
	compiler, err := nft.NewCompiler(nft.Config{NetNSPath: g.node})
	if err != nil {
		t.Fatal(err)
	}
	commit := func(m *selectors.Model) {
		t.Helper()
		if _, err := node.Commit(compiler.Compile(m)); err != nil {
			t.Fatal(err)
		}
		if err := node.Verify(); err != nil {
			t.Fatalf("the guard's table does not read back as written: %v", err)
		}
	}
	const allowed, closed, denied = 80, 81, 82
	for f := range 2 {
		serve(t, g.pod, guardPodIPs[f], allowed)
		serve(t, g.pod, guardPodIPs[f], denied)
		serve(t, g.peer, guardPeerIPs[f], allowed)
		serve(t, g.node, guardGateway[f], allowed)
	}
	const timeout = 300 * time.Millisecond
	type probe struct {
		name     string
		from     string
		to       [2]netip.Addr
		port     int
		unknown  string // while the pod is unknown
		known    string // once committed
		unguared string // the same before any guard
	}
	probes := []probe{
		{"peer to pod", g.peer, guardPodIPs, allowed, "TIMEOUT", "OK", "OK"},
		{"peer to pod, closed port", g.peer, guardPodIPs, closed, "TIMEOUT", "REFUSED", "REFUSED"},
		{"peer to pod, denied port", g.peer, guardPodIPs, denied, "TIMEOUT", "TIMEOUT", "OK"},
		{"pod to peer", g.pod, guardPeerIPs, allowed, "TIMEOUT", "OK", "OK"},
		{"pod to node", g.pod, guardGateway, allowed, "TIMEOUT", "OK", "OK"},
		{"node to its own gateway address", g.node, guardGateway, allowed, "OK", "OK", "OK"},
	}
	check := func(phase string, want func(probe) string) {
		t.Helper()
		for _, p := range probes {
			for f, fam := range []string{"IPv4", "IPv6"} {
				if got := connect(p.from, p.to[f], p.port, timeout); got != want(p) {
					t.Errorf("%s: %s %s: %s, want %s", phase, p.name, fam, got, want(p))
				}
			}
		}
	}
	isolated := &selectors.Model{
		Pods: []selectors.PodRules{{Key: "ns/pod", IPs: guardPodIPs[:], Ingress: []string{"ns/web"}}},
		Policies: []selectors.PolicyRules{{Key: "ns/web", HasIngress: true, Ingress: []selectors.Rule{{
			Peers: selectors.PeerMatch{All: true},
			Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: allowed, Last: closed}}},
		}}}},
	}

	// No guard: everything the kernel would answer gets through.
	commit(&selectors.Model{})
	check("no guard", func(p probe) string { return p.unguared })

	// The guard, the pod not known yet: nothing to or from it.
	commit(&selectors.Model{Guard: selectors.PodAddrGuard{PodCIDRs: guardCIDRs}})
	check("pod unknown", func(p probe) string { return p.unknown })

	// One commit makes the pod known with its policy in force.
	withGuard := *isolated
	withGuard.Guard = selectors.PodAddrGuard{PodCIDRs: guardCIDRs, Known: guardPodIPs[:]}
	commit(&withGuard)
	check("pod committed", func(p probe) string { return p.known })

	// The pod is gone (its address unknown again): cut off again.
	commit(&selectors.Model{Guard: selectors.PodAddrGuard{PodCIDRs: guardCIDRs}})
	check("pod gone", func(p probe) string { return p.unknown })
}

// writeProc writes a /proc/sys value (relative path) in the calling
// thread's network namespace.
func writeProc(key, value string) error {
	return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
}
