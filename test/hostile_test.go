package test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/test/testbed"
)

// hostilePolicies are odd but valid objects the API server accepts.
func hostilePolicies(m *modelBed) []*networkingv1.NetworkPolicy {
	yb := m.PodPrefixes("y/b")
	longName := strings.Repeat("n", 240)
	manyPeers := policy("z", "many-peers", sel("pod", "a"), nil)
	var peers []networkingv1.NetworkPolicyPeer
	for i := 0; i < 200; i++ {
		peers = append(peers, podPeer(selPtr("pod", fmt.Sprintf("p%d", i))))
	}
	peers = append(peers, nsPodPeer(selPtr("ns", "x"), selPtr("pod", "c")))
	manyPeers = withIngress(manyPeers, from(peers...))

	manyExprs := &metav1.LabelSelector{}
	for i := 0; i < 30; i++ {
		manyExprs.MatchExpressions = append(manyExprs.MatchExpressions, metav1.LabelSelectorRequirement{Key: fmt.Sprintf("k%d", i), Operator: metav1.LabelSelectorOpDoesNotExist})
	}
	manyExprs.MatchExpressions = append(manyExprs.MatchExpressions, metav1.LabelSelectorRequirement{Key: "pod", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}})

	return []*networkingv1.NetworkPolicy{
		// Excepts that together cover their CIDR: the block matches nothing.
		withIngress(policy("x", "excepts-cover-cidr", sel("pod", "a"), nil), from(coveredBlock(yb[0]), coveredBlock(yb[1]))),
		// /0 with overlapping excepts.
		withEgress(policy("x", "zero-with-overlapping-excepts", sel("pod", "b"), egressOnly),
			to(blockPeer("0.0.0.0/0", "10.244.0.0/16", "10.244.1.0/24", yb[0]), blockPeer("::/0", "fd00:10:244::/48", yb[1]))),
		// (IPv4-mapped IPv6 CIDRs and excepts equal to their CIDR are
		// refused by the API server; selectors' unit tests cover them.)
		// 200 peers, and 31 expressions.
		manyPeers,
		withIngress(policy("z", "many-expressions", sel("pod", "b"), nil), from(podPeer(manyExprs))),
		// A very long name (the API allows 253 characters).
		withIngress(policy("y", longName, sel("pod", "a"), nil), ingressPorts(from(nsPeer(selPtr("ns", "z"))), namedPort(tcp, "serve-81-tcp"))),
		// A named port nobody defines, next to a numeric one.
		withIngress(policy("x", "unknown-named-port", sel("pod", "c"), nil), ingressPorts(from(), namedPort(tcp, "no-such-port"), port(udp, 80))),
	}
}

// coveredBlock returns the ipBlock of the pair of addresses around a host
// prefix, with both halves excepted (the API refuses an except equal to
// its CIDR, not excepts that cover it together).
func coveredBlock(host string) networkingv1.NetworkPolicyPeer {
	p := netip.MustParsePrefix(host)
	pair := netip.PrefixFrom(p.Addr(), p.Bits()-1).Masked()
	first := pair.Addr()
	return blockPeer(pair.String(), netip.PrefixFrom(first, p.Bits()).String(), netip.PrefixFrom(first.Next(), p.Bits()).String())
}

// TestHostileInput applies odd but valid policies, then deletes a namespace
// under its policies: the agents never crash and the observed matrices
// equal what the reference evaluator predicts.
func TestHostileInput(t *testing.T) {
	m := startModel(t, e2ePrefix+"host", "--deny-action", "reject")
	ctx := context.Background()
	for _, p := range hostilePolicies(m) {
		m.applyPolicy(t, p)
	}
	m.assertEvaluatorConverges(t, "hostile policies")

	// A namespace holding policies and no pods is deleted.
	if err := m.bed.EnsureNamespace(ctx, "doomed", map[string]string{"ns": "doomed"}); err != nil {
		t.Fatal(err)
	}
	m.applyPolicy(t, withIngress(policy("doomed", "deny", all, nil), from(nsPeer(selPtr("ns", "x")))))
	if err := m.cp.Clientset.CoreV1().Namespaces().Delete(ctx, "doomed", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	m.assertEvaluatorConverges(t, "namespace deleted")
	for name, a := range m.agents {
		if a.Exited() {
			t.Errorf("agent of %s exited:\n%s", name, a.Log())
		}
	}
}

func (m *modelBed) assertEvaluatorConverges(t *testing.T, what string) {
	t.Helper()
	ctx := context.Background()
	var failures []string
	for attempt := 0; attempt < 40; attempt++ {
		failures = nil
		for _, spec := range probeSpecs() {
			got := testbed.ProbeMatrix(ctx, m.pods, spec, 48)
			if want := testbed.PredictMatrix(m.clusterState(t), m.pods, spec); !got.Equal(want) {
				failures = append(failures, fmt.Sprintf("%s:\n%s", spec, got.Diff(want)))
			}
		}
		if len(failures) == 0 {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("%s: observed matrices differ from the evaluator:\n%s", what, strings.Join(failures, "\n"))
}
