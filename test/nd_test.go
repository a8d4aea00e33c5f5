package test

import (
	"context"
	"crypto/rand"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

// ndGateway is the address every pod routes through (testbed: the node's
// side of each pod's veth).
var ndGateway = netip.MustParseAddr("169.254.1.1")

// TestNeighbourDiscoveryAcceptIsIPv6Only: the input-egress chain lets
// neighbour discovery from an egress-isolated pod reach its node, since
// without it the pod loses IPv6. That accept must match ICMPv6 only: an
// IPv4 packet with IP protocol 58 whose first payload byte is 135 or 136
// (what the ICMPv6 type field would hold) is no neighbour discovery, and
// the pod's egress policy denies it like any other packet to the node.
// Real packets from raw sockets in the pod's namespace, counted by a raw
// socket in the node's namespace; an open pod's identical packets prove
// the counting, and an IPv6 connection after flushed neighbour caches
// proves real neighbour discovery still passes.
func TestNeighbourDiscoveryAcceptIsIPv6Only(t *testing.T) {
	kerneltest.Require(t, kerneltest.ControlPlane)
	cp := testbed.StartControlPlaneT(t)
	// Two nodes so the node has its address on the link between nodes;
	// every pod is on node 1.
	bed := testbed.NewT(t, cp, testbed.Options{Prefix: e2ePrefix + "nd", Nodes: 2})
	ctx := context.Background()
	node := bed.Nodes[0]
	if err := bed.EnsureNamespace(ctx, "x", map[string]string{"ns": "x"}); err != nil {
		t.Fatal(err)
	}
	pods := map[string]*testbed.Pod{}
	for _, name := range []string{"a", "b", "c"} {
		p, err := bed.AddPod(ctx, testbed.PodSpec{Namespace: "x", Name: name, Node: node.Name, Labels: map[string]string{"pod": name}})
		if err != nil {
			t.Fatal(err)
		}
		pods[name] = p
	}
	testbed.StartAgentT(t, cp, node, "--deny-action", "reject")
	// x/a may only talk to x/b: egress to its node is denied.
	pol := withEgress(policy("x", "a-to-b-only", sel("pod", "a"), egressOnly), to(podPeer(selPtr("pod", "b"))))
	if _, err := cp.Clientset.NetworkingV1().NetworkPolicies("x").Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	isolated, peer, open := pods["a"], pods["b"], pods["c"]
	waitReach(t, "egress policy in force", isolated, open, 4, false)
	waitReach(t, "allowed peer, IPv4", isolated, peer, 4, true)

	for _, tc := range []struct {
		name      string
		from      *testbed.Pod
		proto     int
		firstByte byte
		arrive    bool
	}{
		// Controls: the node's raw socket sees what passes, and the
		// isolation denies the pod's other packets to its node.
		{"open-pod-ipv4-proto-58-byte-135-arrives", open, unix.IPPROTO_ICMPV6, 135, true},
		{"isolated-pod-ipv4-proto-58-byte-128-denied", isolated, unix.IPPROTO_ICMPV6, 128, false},
		{"isolated-pod-ipv4-proto-253-byte-135-denied", isolated, 253, 135, false},
		// The finding: these match an ICMPv6-type test that does not
		// require IPv6.
		{"isolated-pod-ipv4-proto-58-byte-135-denied", isolated, unix.IPPROTO_ICMPV6, 135, false},
		{"isolated-pod-ipv4-proto-58-byte-136-denied", isolated, unix.IPPROTO_ICMPV6, 136, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const perDst = 5
			dsts := []netip.Addr{node.IPv4, ndGateway}
			marker := make([]byte, 16)
			_, _ = rand.Read(marker)
			payload := append([]byte{tc.firstByte, 0, 0, 0}, marker...)
			l, err := listenRawIPv4(node.NetNSPath, tc.proto)
			if err != nil {
				t.Fatal(err)
			}
			defer l.close()
			if err := sendRawIPv4(tc.from.NetNSPath, tc.proto, payload, dsts, perDst); err != nil {
				t.Fatal(err)
			}
			got := l.count(tc.from.IPv4, marker, time.Second, 4*perDst)
			sent := perDst * len(dsts)
			switch {
			case tc.arrive && got != sent:
				t.Errorf("%d of %d IPv4 protocol %d packets (first byte %d) from the open pod %s reached node %s, want all: the listener does not see what passes",
					got, sent, tc.proto, tc.firstByte, tc.from.Key(), node.Name)
			case !tc.arrive && got != 0:
				t.Errorf("%d of %d IPv4 protocol %d packets (first byte %d) from the egress-isolated pod %s reached node %s (addresses %s, %s), whose egress policy denies it the node",
					got, sent, tc.proto, tc.firstByte, tc.from.Key(), node.Name, node.IPv4, ndGateway)
			}
		})
	}

	// Real neighbour discovery still passes: with every neighbour cache
	// empty, the isolated pod's IPv6 connection to its allowed peer needs
	// its node to resolve it and it to resolve its gateway (solicitations
	// and advertisements from the pod's address cross input-egress).
	t.Run("ipv6-neighbour-discovery-still-works", func(t *testing.T) {
		if err := bed.FlushNeighbors(); err != nil {
			t.Fatal(err)
		}
		waitReach(t, "allowed peer over IPv6 after flushing neighbours", isolated, peer, 6, true)
		waitReach(t, "denied pod over IPv6", isolated, open, 6, false)
	})
	// Control: the check above can fail. Without the neighbour-discovery
	// accepts (deleted here with nft; the agent's verification, every
	// 30 s by default, has no time to restore them) the same connection
	// fails, so it does depend on neighbour discovery crossing
	// input-egress.
	t.Run("control-without-the-nd-accepts-ipv6-fails", func(t *testing.T) {
		kerneltest.Require(t, kerneltest.NftBinary)
		listing := kerneltest.Nft(t, node.NetNSPath, "-a", "list", "chain", "inet", "nftpol", nft.ChainInputEgress)
		var deleted int
		for _, line := range strings.Split(listing, "\n") {
			m := handleRE.FindStringSubmatch(strings.TrimSpace(line))
			if m != nil && strings.Contains(m[1], "icmpv6 type") {
				kerneltest.Nft(t, node.NetNSPath, "delete", "rule", "inet", "nftpol", nft.ChainInputEgress, "handle", m[2])
				deleted++
			}
		}
		if deleted == 0 {
			t.Fatalf("no neighbour-discovery rule in %s:\n%s", nft.ChainInputEgress, listing)
		}
		if err := bed.FlushNeighbors(); err != nil {
			t.Fatal(err)
		}
		waitReach(t, "allowed peer over IPv6 without the neighbour-discovery accepts", isolated, peer, 6, false)
	})
}

// waitReach probes TCP 80 until the outcome is the wanted one (at most
// 10 s, 50 attempts), then requires it 3 more times in a row.
func waitReach(t *testing.T, what string, from, to *testbed.Pod, family int, want bool) {
	t.Helper()
	reached := func() bool {
		return testbed.Probe(from, to.Addr(family), testbed.TCP, 80, to.Key(), 500*time.Millisecond) == nil
	}
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 0; reached() != want; attempt++ {
		if attempt >= 50 || time.Now().After(deadline) {
			t.Fatalf("%s: %s -> %s TCP/80 IPv%d reachable=%v after 10 s, want %v", what, from.Key(), to.Key(), family, !want, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i := 0; i < 3; i++ {
		if reached() != want {
			t.Fatalf("%s: %s -> %s TCP/80 IPv%d flapped", what, from.Key(), to.Key(), family)
		}
	}
}
