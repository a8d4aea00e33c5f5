package controllers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	"github.com/nftpol/nftpol/nft"
)

// blackHole accepts connections and never answers: an API server behind a
// partition, the case that hangs a client instead of refusing it.
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

// idleEnforcer is never asked to commit: without an API server the agent
// never builds a model. Config is all NewManager reads.
type idleEnforcer struct{}

func (idleEnforcer) Config() nft.Config { cfg, _ := nft.Config{}.WithDefaults(); return cfg }
func (idleEnforcer) Commit(*nft.Ruleset) (nft.CommitStats, error) {
	return nft.CommitStats{}, errors.New("idleEnforcer commits nothing")
}
func (idleEnforcer) Verify() error { return nil }
func (idleEnforcer) Invalidate()   {}

// TestLiveWhileTheAPIServerIsAway starts an agent whose API server accepts
// connections and never answers. Its probe server must come up anyway:
// live (nothing is wrong with the agent, and the kernel keeps the last
// table), not ready. Before the built-in kinds were mapped without
// discovery, NewManager itself hung on the first mapping lookup and the
// kubelet's liveness probe killed the agent in a loop.
func TestLiveWhileTheAPIServerIsAway(t *testing.T) {
	cfg := &rest.Config{Host: "https://" + blackHole(t), TLSClientConfig: rest.TLSClientConfig{Insecure: true}}
	probeAddr := freeAddr(t)
	type result struct {
		mgr interface{ Start(context.Context) error }
		err error
	}
	done := make(chan result, 1)
	go func() {
		mgr, _, err := NewManager(cfg, Options{
			NodeName: "node-a", MetricsBindAddress: "0", HealthProbeBindAddress: probeAddr,
			Enforcer: idleEnforcer{}, Log: logr.Discard(),
			SkipNameValidation: true, MetricsRegistry: prometheus.NewRegistry(),
		})
		done <- result{mgr, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("NewManager did not return within 60s while the API server does not answer")
	}
	if r.err != nil {
		t.Fatalf("NewManager: %v", r.err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		_ = r.mgr.Start(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-stopped:
		// Informers stuck on the silent server hold the stop until
		// controller-runtime's graceful shutdown timeout (30s) ends it.
		case <-time.After(60 * time.Second):
			t.Error("the manager did not stop within 60s")
		}
	})
	get := func(path string) (int, string, error) {
		client := http.Client{Timeout: 2 * time.Second}
		resp, err := client.Get("http://" + probeAddr + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), nil
	}
	eventually(t, "/healthz answers 200", func() error {
		code, body, err := get("/healthz")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})
	if code, body, err := get("/readyz"); err != nil || code == http.StatusOK {
		t.Errorf("/readyz of an agent that never synced: %d %q %v, want not ready", code, body, err)
	}
}

// freeAddr is a loopback address with a port nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}
