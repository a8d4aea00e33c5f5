package test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/test/testbed"
)

// TestClusterNetworkPolicyNodesPeer: an Admin Deny of egress from
// namespace x to the nodes labeled with the first node's host name
// (an experimental-channel nodes peer, node addresses from the Node
// objects' status) blocks x's pods from both addresses of that node, on
// TCP and UDP, whichever node they run on; the other node, and the pods of
// other namespaces, still reach it. Every probe is also checked against
// the reference evaluator.
func TestClusterNetworkPolicyNodesPeer(t *testing.T) {
	m := startModel(t, e2ePrefix+"cnpn", "--deny-action", "reject")
	if err := m.bed.ServeOnNodes(); err != nil {
		t.Fatal(err)
	}
	target, other := m.bed.Nodes[0], m.bed.Nodes[1]
	m.doStep(t, step{applyCluster: staticCluster(withEgressRules(clusterPolicy("x-not-to-node-1", adminTier, 10, selPtr("ns", "x")),
		cnpTo(cnpDeny, toNodes(selPtr("kubernetes.io/hostname", target.Name)))))})
	state := m.clusterState(t)

	type probe struct {
		from  *testbed.Pod
		node  *testbed.Node
		addr  netip.Addr
		proto testbed.Proto
		port  int
	}
	var probes []probe
	for _, p := range m.pods {
		for _, n := range []*testbed.Node{target, other} {
			for _, addr := range []netip.Addr{n.IPv4, n.IPv6} {
				for _, proto := range []testbed.Proto{testbed.TCP, testbed.UDP} {
					probes = append(probes, probe{p, n, addr, proto, 80})
				}
			}
		}
	}
	want := func(pr probe) bool {
		return pr.from.Namespace != "x" || pr.node != target
	}
	// The evaluator must agree with the hand-written expectation.
	for _, pr := range probes {
		proto := corev1.ProtocolTCP
		if pr.proto == testbed.UDP {
			proto = corev1.ProtocolUDP
		}
		v := reference.Evaluate(state, reference.Packet{Src: pr.from.Addr(familyOf(pr.addr)), Dst: pr.addr, Protocol: proto, Port: int32(pr.port)})
		if v.Allowed != want(pr) {
			t.Fatalf("%s -> %s (%s) %s/%d: the evaluator says allowed=%v, the case %v\n%s", pr.from.Key(), pr.node.Name, pr.addr, pr.proto, pr.port, v.Allowed, want(pr), v.Explain())
		}
	}
	var wrong []string
	deadline := time.Now().Add(20 * time.Second)
	for attempt := 0; attempt < 100; attempt++ {
		wrong = nil
		for _, pr := range probes {
			err := testbed.Probe(pr.from, pr.addr, pr.proto, pr.port, pr.node.Name, time.Second)
			m.probes.Add(1)
			if (err == nil) != want(pr) {
				wrong = append(wrong, fmt.Sprintf("%s -> %s (%s) %s/%d: observed reachable=%v, expected %v", pr.from.Key(), pr.node.Name, pr.addr, pr.proto, pr.port, err == nil, want(pr)))
			}
		}
		if len(wrong) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(wrong) > 0 {
		t.Fatalf("pod to node traffic differs from the policy:\n%s", strings.Join(wrong, "\n"))
	}
	t.Logf("%d probes per round, %d in all", len(probes), m.probes.Load())
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}
