package controllers

import (
	"context"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftpol/nftpol/podstart"
	"github.com/nftpol/nftpol/selectors"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// TestPodStartHints walks a hint through the syncs of a pod's start: the
// plugin's addresses are put on the cached pod that has none, the plugin
// is answered only after a commit that carried them, and the hint goes
// once the API shows the pod's own addresses (or the pod is gone).
func TestPodStartHints(t *testing.T) {
	ip4, ip6 := netip.MustParseAddr("10.244.0.7"), netip.MustParseAddr("fd00:10:244::7")
	ips := []netip.Addr{ip4, ip6}
	pending := &selectors.Pod{Namespace: "ns", Name: "p", NodeName: "n", Labels: map[string]string{"app": "x"}}

	h := newPodStartHints()
	done := h.wait("ns/p", ips)
	select {
	case <-h.kick:
	default:
		t.Fatal("a hint did not ask for a sync")
	}

	// The cache has not seen the pod yet: the hint waits.
	state := &selectors.State{}
	carried := h.apply(state)
	h.committed(carried)
	if closed(done) || len(h.hints) != 1 {
		t.Fatalf("answered or dropped before the pod was in a committed state (hints %d)", len(h.hints))
	}

	// The pod is cached without addresses: the state carries the hint's.
	state = &selectors.State{Pods: []*selectors.Pod{pending}}
	carried = h.apply(state)
	if got := state.Pods[0]; got == pending || !got.IsEndpoint() || len(got.IPs) != 2 || got.IPs[0] != ip4 {
		t.Fatalf("pod in the state: %+v", got)
	}
	if pending.IPs != nil {
		t.Fatal("the cached pod was changed")
	}
	if closed(done) {
		t.Fatal("answered before the commit")
	}
	// A failed commit answers nothing; the next sync carries it again,
	// as the same object (the builder keys its reuse on it).
	first := state.Pods[0]
	state = &selectors.State{Pods: []*selectors.Pod{pending}}
	carried = h.apply(state)
	if state.Pods[0] != first {
		t.Error("a second sync got a new copy of an unchanged pod")
	}
	h.committed(carried)
	if !closed(done) {
		t.Fatal("not answered after the commit")
	}
	// CHECK after that: answered at once.
	if !closed(h.wait("ns/p", ips)) {
		t.Error("CHECK of addresses in force not answered at once")
	}

	// The API shows the addresses: the hint goes with the next commit.
	shown := &selectors.Pod{Namespace: "ns", Name: "p", NodeName: "n", IPs: ips}
	state = &selectors.State{Pods: []*selectors.Pod{shown}}
	h.committed(h.apply(state))
	if state.Pods[0] != shown || len(h.hints) != 0 {
		t.Fatalf("hint kept after the API showed the addresses (hints %d)", len(h.hints))
	}

	// Seen, then gone from the cache: dropped, its waiter released.
	done = h.wait("ns/q", ips)
	<-h.kick
	h.apply(&selectors.State{Pods: []*selectors.Pod{{Namespace: "ns", Name: "q"}}})
	h.apply(&selectors.State{})
	if len(h.hints) != 0 || !closed(done) {
		t.Fatal("hint of a deleted pod kept")
	}
	// Never seen: dropped after hintTTL.
	h.wait("ns/r", ips)
	h.now = func() time.Time { return time.Now().Add(hintTTL + time.Second) }
	h.apply(&selectors.State{})
	if len(h.hints) != 0 {
		t.Fatal("hint of a pod never seen kept past its TTL")
	}
	// DEL forgets.
	h.now = time.Now
	h.wait("ns/s", ips)
	h.forget("ns/s")
	if len(h.hints) != 0 {
		t.Fatal("DEL did not forget the hint")
	}
}

// TestPodStartServer runs the socket server and asks it as the plugin
// does: ADD is answered only after a sync committed the addresses, DEL at
// once, and a bad request with a clear error.
func TestPodStartServer(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "cni.sock")
	h := newPodStartHints()
	srv := &podStartServer{socket: socket, hints: h, log: logr.Discard()}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-stopped; err != nil {
			t.Error(err)
		}
	})
	ask := func(req podstart.Request, within time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), within)
		defer cancel()
		for {
			err := podstart.Ask(ctx, socket, req)
			if _, absent := err.(*podstart.AbsentError); !absent || ctx.Err() != nil {
				return err
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	ips := []netip.Addr{netip.MustParseAddr("10.244.0.9")}
	answered := make(chan error, 1)
	go func() {
		answered <- ask(podstart.Request{Op: podstart.OpAdd, Namespace: "ns", Name: "p", IPs: ips}, 5*time.Second)
	}()
	// The sync the request asked for.
	select {
	case <-h.kick:
	case <-time.After(5 * time.Second):
		t.Fatal("ADD asked for no sync")
	}
	select {
	case err := <-answered:
		t.Fatalf("ADD answered (%v) before any commit", err)
	case <-time.After(200 * time.Millisecond):
	}
	h.committed(h.apply(&selectors.State{Pods: []*selectors.Pod{{Namespace: "ns", Name: "p"}}}))
	if err := <-answered; err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if err := ask(podstart.Request{Op: podstart.OpDel, Namespace: "ns", Name: "p"}, 5*time.Second); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if err := ask(podstart.Request{Op: podstart.OpAdd, Namespace: "ns", Name: "p"}, 5*time.Second); err == nil {
		t.Fatal("ADD without addresses accepted")
	}
}
