package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

func TestSoftMemoryLimit(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		want    int64
		wantErr string
	}{
		{"from the container limit", map[string]string{memoryLimitEnv: "536870912"}, 536870912 / 100 * memoryLimitPercent, ""},
		{"explicit GOMEMLIMIT wins", map[string]string{memoryLimitEnv: "536870912", "GOMEMLIMIT": "300MiB"}, 0, ""},
		{"no limit given", nil, 0, ""},
		{"not bytes", map[string]string{memoryLimitEnv: "512Mi"}, 0, "in bytes"},
		{"zero", map[string]string{memoryLimitEnv: "0"}, 0, "in bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := softMemoryLimit(func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("softMemoryLimit = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
	// The collector must get to work well before the OOM killer.
	if memoryLimitPercent < 80 || memoryLimitPercent > 90 {
		t.Errorf("memoryLimitPercent = %d, want 80-90", memoryLimitPercent)
	}
}

// TestCleanupRespectsTheTableLock: while an agent holds the table lock,
// `nftpol cleanup` refuses and leaves the table; with --wait it waits
// and removes the table once the agent is gone.
func TestCleanupRespectsTheTableLock(t *testing.T) {
	kerneltest.Require(t, kerneltest.NftBinary)
	ns := kerneltest.Netns(t, netnsPrefix)
	kerneltest.Nft(t, ns, "add", "table", "inet", "nftpol")
	agent, err := nft.TryLockTable(ns, "nftpol")
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()

	var out bytes.Buffer
	err = run(context.Background(), []string{"cleanup", "--netns", ns}, &out, &out)
	want := fmt.Sprintf("another nftpol agent holds table inet nftpol in this network namespace (pid %d): not removing the table", os.Getpid())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("cleanup under a running agent: %v, want %q", err, want)
	}
	if !strings.Contains(kerneltest.Nft(t, ns, "list", "tables"), "nftpol") {
		t.Fatal("cleanup removed the table of a running agent")
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	var waitOut syncBuffer
	go func() { done <- run(ctx, []string{"cleanup", "--netns", ns, "--wait"}, &waitOut, &waitOut) }()
	time.Sleep(1500 * time.Millisecond)
	if !strings.Contains(kerneltest.Nft(t, ns, "list", "tables"), "nftpol") {
		t.Fatal("cleanup --wait removed the table of a running agent")
	}
	if !strings.Contains(waitOut.String(), "; waiting for it to exit") {
		t.Errorf("cleanup --wait output: %q", waitOut.String())
	}
	if err := agent.Close(); err != nil {
		t.Fatal(err)
	}
	removed := false
	for attempt := 0; attempt < 50 && !removed; attempt++ {
		time.Sleep(100 * time.Millisecond)
		removed = !strings.Contains(kerneltest.Nft(t, ns, "list", "tables"), "nftpol")
	}
	if !removed {
		t.Fatalf("cleanup --wait did not remove the table within 5s after the agent left: %s", waitOut.String())
	}
	// The cleanup does not keep the lock while it waits for SIGTERM.
	again, err := nft.TryLockTable(ns, "nftpol")
	if err != nil {
		t.Fatalf("lock after cleanup: %v", err)
	}
	again.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("cleanup --wait: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cleanup --wait did not end with its context")
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestSecondAgentWaitsForTheTableLock runs two agent processes for one
// table in one network namespace, with different flags (as a stuck old pod
// next to a second install would be). The second waits: it logs who holds
// the lock, stays alive, is not ready and says why, writes nothing (the
// table keeps the first agent's deny action and handle) and binds no
// NFLOG group. Killed, the first agent frees the lock, and the second takes
// over within a few seconds.
func TestSecondAgentWaitsForTheTableLock(t *testing.T) {
	kerneltest.Require(t, kerneltest.ControlPlane, kerneltest.NftBinary)
	cp := testbed.StartControlPlaneT(t)
	ns := kerneltest.Netns(t, netnsPrefix)
	node := &testbed.Node{Name: "lock-node", NetNSPath: ns}
	ctx := context.Background()

	// A pod isolated by a policy, so the table has a deny rule that shows
	// whose flags wrote it.
	cs := cp.Clientset
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "lock"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := cs.CoreV1().Pods("lock").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "server", Labels: map[string]string{"app": "server"}},
		Spec:       corev1.PodSpec{NodeName: node.Name, Containers: []corev1.Container{{Name: "c", Image: "i"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.7.0.1", PodIPs: []corev1.PodIP{{IP: "10.7.0.1"}}}
	if _, err := cs.CoreV1().Pods("lock").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}}}
	if _, err := cs.NetworkingV1().NetworkPolicies("lock").Create(ctx, deny, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	first := testbed.StartAgentT(t, cp, node, "--deny-action", "reject", "--log-denied")
	table := func() string { return kerneltest.Nft(t, ns, "-a", "list", "table", "inet", "nftpol") }
	handle := regexp.MustCompile(`table inet nftpol \{ # handle (\d+)`)
	firstTable := table()
	firstHandle := handle.FindStringSubmatch(firstTable)
	if firstHandle == nil || !strings.Contains(firstTable, "reject") {
		t.Fatalf("the first agent's table:\n%s", firstTable)
	}

	second, err := testbed.StartAgent(cp, node, t.TempDir(), "--deny-action", "drop", "--verify-interval", "1s", "--log-denied")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = second.Kill()
		if t.Failed() {
			t.Logf("log of the second agent:\n%s", second.Log())
		}
	})
	waitingLine := regexp.MustCompile(`another nftpol agent holds table inet nftpol in this network namespace \(pid (\d+)\); waiting`)
	var holderPid string
	for attempt := 0; attempt < 100 && holderPid == ""; attempt++ {
		if m := waitingLine.FindStringSubmatch(second.Log()); m != nil {
			holderPid = m[1]
		}
		time.Sleep(100 * time.Millisecond)
	}
	if holderPid == "" {
		t.Fatalf("the second agent did not log that it waits within 10s:\n%s", second.Log())
	}
	cmdline, err := os.ReadFile("/proc/" + holderPid + "/cmdline")
	if err != nil || !strings.Contains(string(cmdline), first.HealthAddr) {
		t.Errorf("pid %s named as the holder is not the first agent (%q, %v)", holderPid, cmdline, err)
	}

	// Three verify intervals of the second agent: it must not touch the
	// table, bind NFLOG, or become ready; it must stay alive.
	for i := 0; i < 3; i++ {
		time.Sleep(time.Second)
		if code, body := get(t, second.HealthAddr, "/readyz"); code != http.StatusServiceUnavailable ||
			!strings.Contains(body, "waiting for the table lock: another nftpol agent holds table inet nftpol") {
			t.Errorf("/readyz of the waiting agent: %d %q", code, body)
		}
		if code, body := get(t, second.HealthAddr, "/healthz"); code != http.StatusOK {
			t.Errorf("/healthz of the waiting agent: %d %q", code, body)
		}
	}
	if now := table(); now != firstTable {
		t.Errorf("the table changed while the second agent waited:\nbefore:\n%s\nafter:\n%s", firstTable, now)
	}
	if log := second.Log(); strings.Contains(log, "NFLOG") || strings.Contains(log, "committing") {
		t.Errorf("the waiting agent touched NFLOG or the table:\n%s", log)
	}
	if second.Exited() {
		t.Fatalf("the waiting agent exited:\n%s", second.Log())
	}

	// Agents cannot be removed under a running agent.
	var out bytes.Buffer
	if err := run(ctx, []string{"cleanup", "--netns", ns}, &out, &out); err == nil || !strings.Contains(err.Error(), "another nftpol agent holds table inet nftpol") {
		t.Errorf("cleanup while agents run: %v", err)
	}

	killed := time.Now()
	if err := first.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := second.WaitReady(ctx, 5*time.Second); err != nil {
		t.Fatalf("the second agent did not take over within 5s of the first one's death: %v", err)
	}
	took := time.Since(killed)
	now := table()
	if !strings.Contains(now, "drop") || strings.Contains(now, "reject") {
		t.Errorf("after the takeover the table is not the second agent's (drop):\n%s", now)
	}
	if !strings.Contains(second.Log(), "took the table lock") {
		t.Errorf("the second agent did not log the takeover:\n%s", second.Log())
	}
	t.Logf("takeover: ready %s after SIGKILL of the first agent", took.Round(10*time.Millisecond))
}

func get(t *testing.T, addr, path string) (int, string) {
	t.Helper()
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		t.Errorf("GET %s: %v", path, err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
