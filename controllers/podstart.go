package controllers

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/nftpol/nftpol/podstart"
	"github.com/nftpol/nftpol/selectors"
)

// podStartHints are the addresses the CNI plugin reported for pods whose
// API object does not show them yet (the kubelet writes podIPs only after
// CNI ADD returned). The sync's cache reader hands every pod it gives the
// Builder through pod, which puts a hint's addresses on a pod that has
// none; once a transaction holding them is committed, committed answers
// the plugins waiting on them. A new or dropped hint makes the next sync
// read its pod again (changed), so the Builder holds the pod with the
// hint's addresses exactly while the hint lives. A hint goes away when
// the API shows the pod's addresses (after that state is committed), when
// the pod it was seen on is gone, on CNI DEL, or after hintTTL unseen.
type podStartHints struct {
	mu    sync.Mutex
	hints map[string]*podHint // by "namespace/name"
	// changed makes the next sync read the pod key again, and asks for
	// that sync (cacheState.podKeyChanged). Called without mu held.
	changed func(key string)
	now     func() time.Time
}

// hintTTL bounds how long a hint waits for its pod to show up in the
// cache.
const hintTTL = 2 * time.Minute

type podHint struct {
	key     string
	ips     []netip.Addr
	created time.Time
	// seen is set once a sync found the pod in the cache; applied once
	// the Builder holds the pod as this hint has it (the hint's
	// addresses, or the API's own when shown is set).
	seen, applied, shown bool
	// inForce is set once a committed transaction held these addresses;
	// waiters are closed then.
	inForce bool
	waiters []chan struct{}
}

func newPodStartHints(changed func(key string)) *podStartHints {
	return &podStartHints{hints: map[string]*podHint{}, changed: changed, now: time.Now}
}

// wait records ips for pod key, has its pod read again by the next sync
// and returns a channel closed once a committed transaction holds them.
func (h *podStartHints) wait(key string, ips []netip.Addr) <-chan struct{} {
	done := make(chan struct{})
	h.mu.Lock()
	hint := h.hints[key]
	if hint == nil || !slices.Equal(hint.ips, ips) {
		// New addresses (or a new sandbox): earlier waiters stay on the
		// new hint and are answered with it.
		var waiters []chan struct{}
		if hint != nil {
			waiters = hint.waiters
		}
		hint = &podHint{key: key, ips: slices.Clone(ips), created: h.now(), waiters: waiters}
		h.hints[key] = hint
	}
	if hint.inForce {
		close(done)
	} else {
		hint.waiters = append(hint.waiters, done)
	}
	h.mu.Unlock()
	h.changed(key)
	return done
}

// forget drops the hint of pod key (CNI DEL); the next sync reads the pod
// as the cache has it.
func (h *podStartHints) forget(key string) {
	h.mu.Lock()
	_, ok := h.hints[key]
	delete(h.hints, key)
	h.mu.Unlock()
	if ok {
		h.changed(key)
	}
}

// pod returns the pod of key the Builder is to hold: p with the hint's
// addresses until p shows those very addresses, then p (nil: the pod is
// not in the cache).
// Called by the sync for every pod it reads, before it builds the model.
func (h *podStartHints) pod(key string, p *selectors.Pod) *selectors.Pod {
	if h == nil {
		return p
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	hint := h.hints[key]
	switch {
	case hint == nil:
		return p
	case p == nil:
		// Gone from the cache after it was there (before that, the
		// cache may just not have it yet).
		if hint.seen {
			h.drop(hint)
		}
		return nil
	}
	hint.seen, hint.applied = true, true
	if sameAddrs(p.IPs, hint.ips) {
		// The API caught up: the hint is not needed once this state is
		// committed.
		hint.shown = true
		return p
	}
	if len(p.IPs) > 0 && h.now().Sub(hint.created) > hintTTL {
		// Contradicted by the API for this long, the hint is stale (its
		// DEL was lost, a later sandbox started without the plugin):
		// the API's addresses win.
		h.drop(hint)
		return p
	}
	// No addresses yet, or a new sandbox's: the API lags behind the
	// plugin, which reported the newest ADD.
	c := *p
	c.IPs = hint.ips
	return &c
}

// sameAddrs reports whether a and b hold the same addresses, in any order.
func sameAddrs(a, b []netip.Addr) bool {
	if len(a) != len(b) {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}

// expired drops the hints whose pod never showed up within hintTTL and
// returns their keys. Called by the sync, before it reads the pods.
func (h *podStartHints) expired() []string {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	var keys []string
	now := h.now()
	for key, hint := range h.hints {
		if !hint.seen && now.Sub(hint.created) > hintTTL {
			h.drop(hint)
			keys = append(keys, key)
		}
	}
	return keys
}

// drop removes hint and releases its waiters: there is no pod left to
// protect. h.mu is held.
func (h *podStartHints) drop(hint *podHint) {
	delete(h.hints, hint.key)
	for _, w := range hint.waiters {
		close(w)
	}
	hint.waiters = nil
}

// committed answers the waiters of the hints the Builder held when the
// sync built what was just committed.
func (h *podStartHints) committed() {
	if h == nil {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for key, hint := range h.hints {
		if !hint.applied {
			continue
		}
		hint.inForce = true
		for _, w := range hint.waiters {
			close(w)
		}
		hint.waiters = nil
		if hint.shown {
			delete(h.hints, key)
		}
	}
}

// podStartServer answers the CNI plugin on a unix socket.
type podStartServer struct {
	socket string
	hints  *podStartHints
	log    logr.Logger
}

// requestTimeout bounds a plugin's wait on the agent's side; the plugin
// gives up earlier (podstart.DefaultTimeout).
const requestTimeout = 30 * time.Second

// Start serves until ctx ends (a manager.Runnable). The socket is created
// anew (a stale one from a killed agent is removed) and removed at exit.
func (s *podStartServer) Start(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(s.socket), 0o755); err != nil {
		return fmt.Errorf("creating the CNI socket directory: %w", err)
	}
	if err := os.Remove(s.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing a stale CNI socket: %w", err)
	}
	ln, err := net.Listen("unix", s.socket)
	if err != nil {
		return fmt.Errorf("listening for the CNI plugin: %w", err)
	}
	s.log.Info("answering the CNI plugin", "socket", s.socket)
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting a CNI plugin connection: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer conn.Close()
			s.serve(ctx, conn)
		}()
	}
}

func (s *podStartServer) serve(ctx context.Context, conn net.Conn) {
	req, err := podstart.ReadRequest(conn, 5*time.Second)
	if err != nil {
		s.log.Error(err, "bad request from the CNI plugin")
		_ = podstart.WriteReply(conn, err)
		return
	}
	key := req.Namespace + "/" + req.Name
	log := s.log.WithValues("op", req.Op, "pod", key, "ips", req.IPs)
	if req.Op == podstart.OpDel {
		s.hints.forget(key)
		_ = podstart.WriteReply(conn, nil)
		return
	}
	start := time.Now()
	done := s.hints.wait(key, req.IPs)
	timer := time.NewTimer(requestTimeout)
	defer timer.Stop()
	select {
	case <-done:
		log.V(1).Info("pod addresses in force", "wait", time.Since(start))
		err = nil
	case <-timer.C:
		err = fmt.Errorf("no sync committed the addresses of pod %s within %s", key, requestTimeout)
	case <-ctx.Done():
		err = errors.New("the agent is stopping")
	}
	if err != nil {
		log.Error(err, "CNI plugin not answered")
	}
	if werr := podstart.WriteReply(conn, err); werr != nil {
		log.Error(werr, "answering the CNI plugin")
	}
}

// addPodStartServer serves the CNI plugin on socket (nothing when socket
// is empty); its hints go through the sync's cache reader.
func addPodStartServer(mgr manager.Manager, cached *cacheState, socket string, log logr.Logger) error {
	if socket == "" {
		return nil
	}
	cached.podStart = newPodStartHints(cached.podKeyChanged)
	if err := mgr.Add(&podStartServer{socket: socket, hints: cached.podStart, log: log}); err != nil {
		return fmt.Errorf("adding the CNI plugin server: %w", err)
	}
	return nil
}
