package test

import (
	"context"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

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

// TestRestartWithoutGap kills the agent of a node with SIGKILL while a
// default deny is in force and probes run against the isolated pod: the
// table stays in the kernel, so no probe may get through, during the outage
// or the restart (whose first commit replaces the table atomically).
func TestRestartWithoutGap(t *testing.T) {
	m := startModel(t, "nftpol-rst", "--deny-action", "reject")
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
	var reached, total int
	wg.Add(1)
	go func() {
		defer wg.Done()
		reached, total = probeLoop(client, server, 50*time.Millisecond, 400, stop)
	}()
	time.Sleep(500 * time.Millisecond)
	for round := 0; round < 3; round++ {
		if err := agent.Kill(); err != nil {
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
	if reached != 0 || total < 20 {
		t.Fatalf("%d of %d probes reached the isolated pod across 3 SIGKILL restarts", reached, total)
	}
	t.Logf("0 of %d probes reached the isolated pod across 3 SIGKILL restarts", total)
	// Open traffic is open again at once.
	if err := testbed.Probe(client, open.IPv4, testbed.TCP, 80, open.Key(), time.Second); err != nil {
		t.Fatalf("traffic no policy isolates is blocked after the restart: %v", err)
	}
}

// TestDriftIsRepairedAndForeignTablesUntouched has a third party flush our
// table and delete a chain in a node namespace, next to a foreign table:
// the agent restores its table within its verify interval (1 s here), and
// the foreign table is never modified.
func TestDriftIsRepairedAndForeignTablesUntouched(t *testing.T) {
	m := startModel(t, "nftpol-drift", "--deny-action", "reject", "--verify-interval", "1s")
	server := m.bed.Pod("x/a")
	node := m.bed.Node(server.Node)
	nft := func(args ...string) string {
		out, err := exec.Command("nsenter", append([]string{"--net=" + node.NetNSPath, "nft"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("nft %v: %v: %s", args, err, out)
		}
		return string(out)
	}
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
