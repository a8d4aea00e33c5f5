package test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

// probeLoop probes from one pod to another every interval until stop is
// closed (at most maxProbes), and counts the probes that got through.
func probeLoop(from, to *testbed.Pod, interval time.Duration, maxProbes int, stop <-chan struct{}) (reached, total int) {
	for total < maxProbes {
		select {
		case <-stop:
			return reached, total
		case <-time.After(interval):
		}
		total++
		if testbed.Probe(from, to.IPv4, testbed.TCP, 80, to.Key(), 300*time.Millisecond) == nil {
			reached++
		}
	}
	return reached, total
}

// TestRestartWithoutGap kills the agent of a node with SIGKILL three times,
// then upgrades it in place (SIGTERM, then a new binary with the same
// arguments, as a DaemonSet rollout does), while a default deny is in force
// and probes run against the isolated pod and against an open one: the
// table stays in the kernel, so no probe reaches the isolated pod, during
// the outages or the restarts (whose first commit replaces the table
// atomically), and every probe reaches the open one.
func TestRestartWithoutGap(t *testing.T) {
	m := startModel(t, e2ePrefix+"rst", "--deny-action", "reject")
	newBin, err := testbed.BuildAgent(t.TempDir(), "upgrade-test")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	deny := policy("x", "deny-all-ingress", all, ingressOnly)
	m.applyPolicy(t, deny)
	server, client, open := m.bed.Pod("x/a"), m.bed.Pod("y/b"), m.bed.Pod("y/a")
	_, failures := m.converge(step{expect: func(e *expectation) { e.isolateIngress("x/*") }})
	if len(failures) > 0 {
		t.Fatalf("default deny not in force:\n%s", strings.Join(failures, "\n"))
	}

	node := m.bed.Node(server.Node)
	agent := m.agents[node.Name]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reached, total, openReached, openTotal int
	wg.Add(2)
	go func() {
		defer wg.Done()
		reached, total = probeLoop(client, server, 50*time.Millisecond, 600, stop)
	}()
	go func() {
		defer wg.Done()
		openReached, openTotal = probeLoop(client, open, 100*time.Millisecond, 300, stop)
	}()
	time.Sleep(500 * time.Millisecond)
	for round := 0; round < 4; round++ {
		upgrade := round == 3
		if upgrade {
			if err := agent.Stop(); err != nil {
				t.Fatal(err)
			}
			agent.Replace(newBin)
		} else if err := agent.Kill(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(500 * time.Millisecond)
		if err := agent.Restart(); err != nil {
			t.Fatal(err)
		}
		if err := agent.WaitReady(ctx, 30*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	close(stop)
	wg.Wait()
	if !strings.Contains(agent.Log(), `version="upgrade-test"`) {
		t.Fatalf("the upgraded binary did not start; log:\n%s", agent.Log())
	}
	if reached != 0 || total < 20 {
		t.Fatalf("%d of %d probes reached the isolated pod across 3 SIGKILL restarts and an upgrade", reached, total)
	}
	if openReached != openTotal || openTotal < 10 {
		t.Fatalf("only %d of %d probes reached a pod no policy isolates, across the restarts", openReached, openTotal)
	}
	t.Logf("0 of %d probes reached the isolated pod and %d of %d the open one across 3 SIGKILL restarts and an upgrade", total, openReached, openTotal)
}

// TestAPIServerOutage cuts the agents off the API server for 10 s (their
// connections reset, new ones refused) while probes run: the committed
// rules stay in force. Meanwhile the policies change; when the API server
// is reachable again the agents reconnect and converge to the new state.
func TestAPIServerOutage(t *testing.T) {
	cp := testbed.StartControlPlaneT(t)
	proxy := testbed.StartAPIProxyT(t, cp)
	m := startModelOn(t, cp, e2ePrefix+"outage", "--deny-action", "reject", "--kubeconfig", proxy.Kubeconfig)
	m.applyPolicy(t, policy("x", "deny-all-ingress", all, ingressOnly))
	before := step{expect: func(e *expectation) { e.isolateIngress("x/*") }}
	if _, failures := m.converge(before); len(failures) > 0 {
		t.Fatalf("default deny not in force:\n%s", strings.Join(failures, "\n"))
	}

	proxy.Cut()
	cut := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var reached, total int
	wg.Add(1)
	go func() {
		defer wg.Done()
		reached, total = probeLoop(m.bed.Pod("y/b"), m.bed.Pod("x/a"), 50*time.Millisecond, 400, stop)
	}()
	// Changes the agents cannot see yet: x opens to y, z closes.
	m.applyPolicy(t, withIngress(policy("x", "deny-all-ingress", all, nil), from(nsPeer(selPtr("ns", "y")))))
	m.applyPolicy(t, policy("z", "deny-all-ingress", all, ingressOnly))
	time.Sleep(10*time.Second - time.Since(cut))
	close(stop)
	wg.Wait()
	if reached != 0 || total < 20 {
		t.Fatalf("%d of %d probes reached the isolated pod while the API server was unreachable", reached, total)
	}
	for name, a := range m.agents {
		if a.Exited() {
			t.Fatalf("agent of %s exited during the outage; log:\n%s", name, a.Log())
		}
	}
	// The table did not move during the outage: the full matrices are
	// still those of before.
	if _, failures := m.converge(before); len(failures) > 0 {
		t.Fatalf("the committed rules changed during the outage:\n%s", strings.Join(failures, "\n"))
	}

	if err := proxy.Restore(); err != nil {
		t.Fatal(err)
	}
	restored := time.Now()
	after := step{expect: func(e *expectation) {
		e.isolateIngress("x/*", "y/*")
		e.isolateIngress("z/*")
	}}
	observed, failures := m.convergeWithin(after, 90*time.Second)
	if len(failures) > 0 {
		t.Fatalf("within 90 s after the API server came back the agents did not converge:\n%s", strings.Join(failures, "\n"))
	}
	m.checkEvaluator(t, observed)
	t.Logf("0 of %d probes reached the isolated pod during a 10 s outage; changes made meanwhile in force %s after the API server came back",
		total, time.Since(restored).Round(time.Millisecond))
}

// TestDriftIsRepairedAndForeignTablesUntouched has a third party flush our
// table and delete a chain in a node namespace, next to a foreign table:
// the agent restores its table within its verify interval (1 s here), and
// the foreign table is never modified.
func TestDriftIsRepairedAndForeignTablesUntouched(t *testing.T) {
	// The third party is the nft command, as an operator would use it.
	kerneltest.Require(t, kerneltest.ControlPlane, kerneltest.NftBinary)
	m := startModel(t, e2ePrefix+"drift", "--deny-action", "reject", "--verify-interval", "1s")
	server := m.bed.Pod("x/a")
	node := m.bed.Node(server.Node)
	nft := func(args ...string) string { return kerneltest.Nft(t, node.NetNSPath, args...) }
	nft("add", "table", "inet", "foreign")
	nft("add", "chain", "inet", "foreign", "c", "{ type filter hook forward priority 10; }")
	nft("add", "rule", "inet", "foreign", "c", "tcp dport 9999 counter accept")
	foreign := nft("list", "table", "inet", "foreign")

	m.applyPolicy(t, withIngress(policy("x", "allow-y", all, nil), from(nsPeer(selPtr("ns", "y")))))
	want := step{expect: func(e *expectation) { e.isolateIngress("x/*", "y/*") }}
	if _, failures := m.converge(want); len(failures) > 0 {
		t.Fatalf("policy not in force:\n%s", strings.Join(failures, "\n"))
	}
	for _, sabotage := range [][]string{
		{"flush", "table", "inet", "nftpol"},
		{"delete", "chain", "inet", "nftpol", "forward-ingress"},
	} {
		nft(sabotage...)
		start := time.Now()
		if _, failures := m.converge(want); len(failures) > 0 {
			t.Fatalf("after %v the table was not restored:\n%s", sabotage, strings.Join(failures, "\n"))
		}
		t.Logf("after %q the policy was in force again within %s", strings.Join(sabotage, " "), time.Since(start).Round(time.Millisecond))
	}
	if got := nft("list", "table", "inet", "foreign"); got != foreign {
		t.Fatalf("the foreign table changed:\nbefore:\n%s\nafter:\n%s", foreign, got)
	}
}

// eventuallyProbe probes until the outcome is the wanted one (at most 5 s),
// then requires it 5 more times in a row.
func eventuallyProbe(t *testing.T, what string, from, to *testbed.Pod, wantReach bool) {
	t.Helper()
	reached := func() bool {
		return testbed.Probe(from, to.IPv4, testbed.TCP, 80, to.Key(), 500*time.Millisecond) == nil &&
			testbed.Probe(from, to.IPv6, testbed.TCP, 80, to.Key(), 500*time.Millisecond) == nil
	}
	deadline := time.Now().Add(5 * time.Second)
	for attempt := 0; attempt < 100 && reached() != wantReach; attempt++ {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s -> %s reachable=%v after 5s, want %v", what, from.Key(), to.Key(), !wantReach, wantReach)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := 0; i < 5; i++ {
		if reached() != wantReach {
			t.Fatalf("%s: %s -> %s flapped", what, from.Key(), to.Key())
		}
	}
}

// TestTerminalPodsAndIPReuse: a pod that finished keeps no place in any
// set, and an address handed to a new pod with other labels follows the
// new pod.
func TestTerminalPodsAndIPReuse(t *testing.T) {
	m := startModel(t, e2ePrefix+"reuse", "--deny-action", "reject")
	ctx := context.Background()
	m.applyPolicy(t, withIngress(policy("x", "allow-b", sel("pod", "a"), nil),
		from(nsPodPeer(exprSel("ns", metav1.LabelSelectorOpIn, "y", "z"), selPtr("pod", "b")))))
	if _, failures := m.converge(step{expect: func(e *expectation) { e.isolateIngress("x/a", "y/b", "z/b") }}); len(failures) > 0 {
		t.Fatalf("policy not in force:\n%s", strings.Join(failures, "\n"))
	}
	server, peer, finished := m.bed.Pod("x/a"), m.bed.Pod("y/b"), m.bed.Pod("z/b")

	// z/b's containers exited: its address leaves the peer set although
	// the object (and here the namespace) still exist.
	if err := m.bed.SetPodPhase(ctx, "z", "b", "Succeeded"); err != nil {
		t.Fatal(err)
	}
	eventuallyProbe(t, "terminal pod", finished, server, false)
	eventuallyProbe(t, "running peer", peer, server, true)

	// y/b (allowed, running) is deleted and its address goes to a new pod
	// with other labels on the same node.
	if err := m.bed.DeletePod(ctx, "y", "b"); err != nil {
		t.Fatal(err)
	}
	evil, err := m.bed.AddPod(ctx, testbed.PodSpec{Namespace: "y", Name: "evil", Node: peer.Node, Labels: map[string]string{"pod": "evil"}, ReuseAddrsOf: "y/b"})
	if err != nil {
		t.Fatal(err)
	}
	if evil.IPv4 != peer.IPv4 || evil.IPv6 != peer.IPv6 {
		t.Fatalf("the new pod did not get the old addresses: %s %s", evil.IPv4, evil.IPv6)
	}
	eventuallyProbe(t, "reused address, other labels", evil, server, false)

	// A new pod labeled pod=b, with a fresh address, is let in.
	good, err := m.bed.AddPod(ctx, testbed.PodSpec{Namespace: "y", Name: "b2", Node: m.bed.Nodes[1].Name, Labels: map[string]string{"pod": "b"}})
	if err != nil {
		t.Fatal(err)
	}
	eventuallyProbe(t, "new pod matching the peer", good, server, true)
}
