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
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/nftpol/nftpol/podstart"
	"github.com/nftpol/nftpol/selectors"
)

// podStartHints are the addresses the CNI plugin reported for pods whose
// API object does not show them yet (the kubelet writes podIPs only after
// CNI ADD returned). A sync puts them on the pods it reads (apply), and
// once the transaction is committed it answers the plugins waiting on
// them (committed). A hint goes away when the API shows the pod's
// addresses, when the pod it was seen on is gone, on CNI DEL, or after
// hintTTL.
type podStartHints struct {
	mu    sync.Mutex
	hints map[string]*podHint // by "namespace/name"
	// kick enqueues a sync (a source.Channel of the controller).
	kick chan event.GenericEvent
	now  func() time.Time
}

// hintTTL bounds how long a hint waits for its pod to show up in the
// cache or in the API with addresses.
const hintTTL = 2 * time.Minute

type podHint struct {
	key     string
	ips     []netip.Addr
	created time.Time
	// seen is set once a sync found the pod in the cache; shown once it
	// found it with addresses (the hint is dropped when that state is
	// committed).
	seen, shown bool
	// inForce is set once a committed transaction held these addresses;
	// waiters are closed then.
	inForce bool
	waiters []chan struct{}
	// base and hinted: the cached pod the hint was last applied to and
	// the copy with the hint's addresses, kept so that the builder sees
	// the same object from one sync to the next.
	base, hinted *selectors.Pod
}

func newPodStartHints() *podStartHints {
	return &podStartHints{hints: map[string]*podHint{}, kick: make(chan event.GenericEvent, 1), now: time.Now}
}

// wait records ips for pod key, enqueues a sync and returns a channel
// closed once a committed transaction holds them.
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
	select {
	case h.kick <- event.GenericEvent{}:
	default: // a sync is already asked for; it reads this hint
	}
	return done
}

// forget drops the hint of pod key (CNI DEL).
func (h *podStartHints) forget(key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.hints, key)
}

// apply puts the hinted addresses on the pods of state that have none in
// the cache, and drops the hints the cache made useless. It returns the
// hints this state carries: committed answers their waiters once the
// state is in force. Called by the syncer, once per sync, before it
// builds the model.
func (h *podStartHints) apply(state *selectors.State) []*podHint {
	if h == nil {
		return nil
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.hints) == 0 {
		return nil
	}
	var carried []*podHint
	found := make(map[string]bool, len(h.hints))
	for i, p := range state.Pods {
		key := p.Key()
		hint := h.hints[key]
		if hint == nil {
			continue
		}
		found[key] = true
		hint.seen = true
		carried = append(carried, hint)
		if len(p.IPs) > 0 {
			// The API caught up: the pod's own addresses are in this
			// state; the hint is no longer needed once it is committed.
			hint.shown = true
			continue
		}
		if hint.base != p {
			c := *p
			c.IPs = hint.ips
			hint.base, hint.hinted = p, &c
		}
		state.Pods[i] = hint.hinted
	}
	now := h.now()
	for key, hint := range h.hints {
		if found[key] {
			continue
		}
		// Gone from the cache after it was there, or never came.
		if hint.seen || now.Sub(hint.created) > hintTTL {
			delete(h.hints, key)
			for _, w := range hint.waiters {
				close(w)
			}
			hint.waiters = nil
		}
	}
	return carried
}

// committed answers the waiters of the hints a committed state carried.
func (h *podStartHints) committed(carried []*podHint) {
	if len(carried) == 0 {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, hint := range carried {
		hint.inForce = true
		if hint.shown && h.hints[hint.key] == hint {
			delete(h.hints, hint.key)
		}
		for _, w := range hint.waiters {
			close(w)
		}
		hint.waiters = nil
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
// is empty) and returns the channel on which it asks for syncs.
func addPodStartServer(mgr manager.Manager, syncer *Syncer, socket string, log logr.Logger) (<-chan event.GenericEvent, error) {
	if socket == "" {
		return make(chan event.GenericEvent), nil
	}
	syncer.podStart = newPodStartHints()
	if err := mgr.Add(&podStartServer{socket: socket, hints: syncer.podStart, log: log}); err != nil {
		return nil, fmt.Errorf("adding the CNI plugin server: %w", err)
	}
	return syncer.podStart.kick, nil
}
