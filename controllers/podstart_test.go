package controllers

import (
	"context"
	"net/netip"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftpol/nftpol/podstart"
	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/test/kerneltest"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// changedKeys records the pod keys a podStartHints asks to read again.
type changedKeys struct {
	mu   sync.Mutex
	keys []string
}

func (c *changedKeys) add(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keys = append(c.keys, key)
}

func (c *changedKeys) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	k := c.keys
	c.keys = nil
	return k
}

// TestPodStartHints walks a hint through the syncs of a pod's start: the
// plugin's addresses are put on the cached pod that has none, the plugin
// is answered only after a commit made while the Builder held them, and
// the hint goes once the API shows the pod's own addresses (or the pod is
// gone, or DEL, or its TTL), each time making the pod read again.
func TestPodStartHints(t *testing.T) {
	ip4, ip6 := netip.MustParseAddr("10.244.0.7"), netip.MustParseAddr("fd00:10:244::7")
	ips := []netip.Addr{ip4, ip6}
	pending := &selectors.Pod{Namespace: "ns", Name: "p", NodeName: "n", Labels: map[string]string{"app": "x"}}

	var changed changedKeys
	h := newPodStartHints(changed.add)
	done := h.wait("ns/p", ips)
	if got := changed.take(); !slices.Equal(got, []string{"ns/p"}) {
		t.Fatalf("a hint asked to read %v again, want its pod", got)
	}

	// The cache has not seen the pod yet: the hint waits.
	if got := h.pod("ns/p", nil); got != nil {
		t.Fatalf("a pod not in the cache became %+v", got)
	}
	h.committed()
	if closed(done) || len(h.hints) != 1 {
		t.Fatalf("answered or dropped before the pod was in a committed state (hints %d)", len(h.hints))
	}

	// The pod is cached without addresses: the Builder gets the hint's.
	got := h.pod("ns/p", pending)
	if got == pending || !got.IsEndpoint() || len(got.IPs) != 2 || got.IPs[0] != ip4 {
		t.Fatalf("pod for the Builder: %+v", got)
	}
	if pending.IPs != nil {
		t.Fatal("the cached pod was changed")
	}
	if closed(done) {
		t.Fatal("answered before the commit")
	}
	// Other pods pass untouched.
	other := &selectors.Pod{Namespace: "ns", Name: "o"}
	if h.pod("ns/o", other) != other {
		t.Error("a pod without hint was replaced")
	}
	h.committed()
	if !closed(done) {
		t.Fatal("not answered after the commit")
	}
	// CHECK after that: answered at once.
	if !closed(h.wait("ns/p", ips)) {
		t.Error("CHECK of addresses in force not answered at once")
	}

	// The API still shows an earlier sandbox's address: the hint's win.
	stale := &selectors.Pod{Namespace: "ns", Name: "p", NodeName: "n", IPs: []netip.Addr{netip.MustParseAddr("10.244.0.3")}}
	if got := h.pod("ns/p", stale); got == stale || !slices.Equal(got.IPs, ips) {
		t.Fatalf("a stale address replaced the plugin's: %+v", got)
	}
	h.committed()
	if len(h.hints) != 1 {
		t.Fatal("hint dropped while the API showed other addresses")
	}
	// ... but not past hintTTL: then the hint is stale, and the API wins.
	h.now = func() time.Time { return time.Now().Add(hintTTL + time.Second) }
	if got := h.pod("ns/p", stale); got != stale || len(h.hints) != 0 {
		t.Fatalf("a hint contradicted by the API past its TTL kept (pod %+v)", got)
	}
	h.now = time.Now
	h.wait("ns/p", ips)
	h.pod("ns/p", pending)
	h.committed()

	// The API shows the addresses (in its own order): the hint goes with
	// the next commit.
	shown := &selectors.Pod{Namespace: "ns", Name: "p", NodeName: "n", IPs: []netip.Addr{ip6, ip4}}
	if h.pod("ns/p", shown) != shown {
		t.Fatal("the API's addresses were not kept")
	}
	h.committed()
	if len(h.hints) != 0 {
		t.Fatalf("hint kept after the API showed the addresses (hints %d)", len(h.hints))
	}

	// Seen, then gone from the cache: dropped, its waiter released.
	done = h.wait("ns/q", ips)
	h.pod("ns/q", &selectors.Pod{Namespace: "ns", Name: "q"})
	h.pod("ns/q", nil)
	if len(h.hints) != 0 || !closed(done) {
		t.Fatal("hint of a deleted pod kept")
	}
	// Never seen: dropped after hintTTL, and the pod read again.
	h.wait("ns/r", ips)
	changed.take()
	h.now = func() time.Time { return time.Now().Add(hintTTL + time.Second) }
	if got := h.expired(); len(h.hints) != 0 || !slices.Equal(got, []string{"ns/r"}) {
		t.Fatalf("hint of a pod never seen kept past its TTL (expired %v)", got)
	}
	// DEL forgets, and the pod is read again without the hint.
	h.now = time.Now
	h.wait("ns/s", ips)
	changed.take()
	h.forget("ns/s")
	if len(h.hints) != 0 || !slices.Equal(changed.take(), []string{"ns/s"}) {
		t.Fatal("DEL did not forget the hint")
	}
}

// TestPodStartServer runs the socket server and asks it as the plugin
// does: ADD is answered only after a sync committed the addresses, DEL at
// once, and a bad request with a clear error.
func TestPodStartServer(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "cni.sock")
	var changed changedKeys
	h := newPodStartHints(changed.add)
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
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if len(changed.take()) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("ADD asked for no sync")
		}
	}
	select {
	case err := <-answered:
		t.Fatalf("ADD answered (%v) before any commit", err)
	case <-time.After(200 * time.Millisecond):
	}
	h.pod("ns/p", &selectors.Pod{Namespace: "ns", Name: "p"})
	h.committed()
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

// startControlPlane starts a kube-apiserver and etcd (envtest) for the
// test, stopped when it ends; it skips or fails (CI) without them.
func startControlPlane(t *testing.T) *rest.Config {
	t.Helper()
	kerneltest.Require(t, kerneltest.ControlPlane)
	env := &envtest.Environment{}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	return cfg
}

// TestPodCIDRSource reads the guard's pod CIDRs as the agent does: the
// given ones first; else the Node's spec.podCIDRs from the API server,
// asked again (not more often than podCIDRRetry, in the background) while
// it has none, and kept once found.
func TestPodCIDRSource(t *testing.T) {
	cfg := startControlPlane(t)
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
	if err := c.Create(ctx, node); err != nil {
		t.Fatal(err)
	}
	src := &podCIDRSource{node: "n1", reader: c, log: logr.Discard()}
	if got := src.cidrs(ctx); got != nil {
		t.Fatalf("a node without pod CIDRs gave %v", got)
	}
	node.Spec.PodCIDR, node.Spec.PodCIDRs = "10.244.1.0/24", []string{"10.244.1.0/24", "fd00:10:244:1::/64"}
	if err := c.Update(ctx, node); err != nil {
		t.Fatal(err)
	}
	if got := src.cidrs(ctx); got != nil {
		t.Fatalf("asked the API server again within %s: %v", podCIDRRetry, got)
	}
	src.mu.Lock()
	src.lastTry = time.Now().Add(-podCIDRRetry)
	src.mu.Unlock()
	// Asked again, in the background: the sync that asks does not wait,
	// a later one has the answer.
	if got := src.cidrs(ctx); got != nil {
		t.Fatalf("a sync waited for the API server after the first read: %v", got)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:10:244:1::/64")}
	for attempt := 0; !slices.Equal(src.cidrs(ctx), want); attempt++ {
		if attempt == 100 {
			t.Fatalf("pod CIDRs %v 10 s after the background read began, want %v", src.cidrs(ctx), want)
		}
		time.Sleep(100 * time.Millisecond)
	}
	src.reader = nil // found: never asked again
	if got := src.cidrs(ctx); !slices.Equal(got, want) {
		t.Fatalf("pod CIDRs %v once learned, want %v", got, want)
	}
	given := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16")}
	src = &podCIDRSource{node: "n1", explicit: given}
	if got := src.cidrs(ctx); !slices.Equal(got, given) {
		t.Fatalf("given pod CIDRs: %v", got)
	}
	src = &podCIDRSource{node: "absent", reader: c, log: logr.Discard()}
	if got := src.cidrs(ctx); got != nil {
		t.Fatalf("a node that does not exist gave %v", got)
	}
}
