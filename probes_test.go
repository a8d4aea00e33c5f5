package main

import (
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

// blackHole accepts connections and never answers: an API server behind a
// partition, which hangs a client instead of refusing it.
func blackHole(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return l.Addr().String()
}

// TestLiveWhileTheAPIServerIsAway starts an agent process whose API server
// accepts connections and never answers, as after a partition or while
// the control plane restarts. The agent must serve its probes anyway:
// live (nothing is wrong with it, and the kernel keeps the last committed
// table), not ready. Before the built-in kinds were mapped without
// discovery, building the manager waited on discovery, the process exited
// after the TLS handshake timeout without ever serving /healthz, and the
// kubelet's liveness probe would have killed it in a loop.
func TestLiveWhileTheAPIServerIsAway(t *testing.T) {
	kerneltest.Require(t)
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := strings.Join([]string{
		"apiVersion: v1",
		"kind: Config",
		"clusters:",
		"- name: away",
		"  cluster:",
		"    server: https://" + blackHole(t),
		"    insecure-skip-tls-verify: true",
		"contexts:",
		"- name: away",
		"  context: {cluster: away, user: away}",
		"current-context: away",
		"users:",
		"- name: away",
		"  user: {token: t}",
		"",
	}, "\n")
	if err := os.WriteFile(kubeconfig, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	node := &testbed.Node{Name: "away-node", NetNSPath: kerneltest.Netns(t, netnsPrefix)}
	agent, err := testbed.StartAgent(&testbed.ControlPlane{Kubeconfig: kubeconfig}, node, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = agent.Kill()
		if t.Failed() {
			t.Logf("agent log:\n%s", agent.Log())
		}
	})
	// Long enough for the client's 10 s TLS handshake timeout to have
	// ended a manager that waits on discovery.
	deadline := time.Now().Add(30 * time.Second)
	live := 0
	for attempt := 0; attempt < 300 && time.Now().Before(deadline); attempt++ {
		if agent.Exited() {
			t.Fatal("the agent exited while the API server does not answer")
		}
		if code, _ := probe(agent.HealthAddr, "/healthz"); code == http.StatusOK {
			live++
		}
		time.Sleep(100 * time.Millisecond)
	}
	if live == 0 {
		t.Fatal("/healthz never answered 200 within 30s")
	}
	if agent.Exited() {
		t.Fatal("the agent exited while the API server does not answer")
	}
	if code, body := probe(agent.HealthAddr, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz after 30s: %d %q", code, body)
	}
	if code, body := probe(agent.HealthAddr, "/readyz"); code == http.StatusOK {
		t.Errorf("/readyz of an agent that never synced: %d %q, want not ready", code, body)
	}
}

// probe is one GET of a probe path; 0 when nothing answers.
func probe(addr, path string) (int, string) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 512)
	n, _ := resp.Body.Read(buf)
	b.Write(buf[:n])
	return resp.StatusCode, b.String()
}
