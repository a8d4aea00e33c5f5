package controllers

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpol/nftpol/selectors"
)

// podCIDRSource says which pod CIDRs the guard of pod addresses covers
// (selectors.PodAddrGuard): the ones given (--pod-cidrs, for an IPAM that
// does not use the Node's), else the Node's spec.podCIDRs, read from the
// API server until found (they never change once set).
//
// Only the first read, before the first commit, is made by the sync that
// needs it, so that the agent's first table already guards. The reads
// after it (while the Node has none) run in the background: a sync never
// waits for the API server, and the sync after a read takes its answer
// (the syncer syncs at least every --verify-interval).
type podCIDRSource struct {
	node     string
	reader   client.Reader
	explicit []netip.Prefix
	log      logr.Logger

	// mu guards what follows: the background read writes it.
	mu      sync.Mutex
	learned []netip.Prefix
	lastTry time.Time
	reading bool
	// toldNone is set once the Node was found without pod CIDRs; only
	// the read in progress (there is one at a time) uses it.
	toldNone bool
}

// podCIDRRetry is how often the API server is asked again for a Node that
// had no pod CIDRs; podCIDRReadTimeout bounds one background read.
const (
	podCIDRRetry       = 30 * time.Second
	podCIDRReadTimeout = 10 * time.Second
)

// cidrs returns the pod CIDRs to guard; none (the guard is off) while
// they are unknown.
func (p *podCIDRSource) cidrs(ctx context.Context) []netip.Prefix {
	switch {
	case p == nil:
		return nil
	case len(p.explicit) > 0:
		return p.explicit
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.learned) > 0 || p.reading || (!p.lastTry.IsZero() && time.Since(p.lastTry) < podCIDRRetry) {
		return p.learned
	}
	first := p.lastTry.IsZero()
	p.lastTry = time.Now()
	if first {
		p.learned = p.read(ctx)
		return p.learned
	}
	p.reading = true
	go func() {
		readCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), podCIDRReadTimeout)
		defer cancel()
		cidrs := p.read(readCtx)
		p.mu.Lock()
		defer p.mu.Unlock()
		p.learned, p.reading = cidrs, false
	}()
	return nil
}

// read asks the API server for the Node's pod CIDRs; none when it has
// none or cannot be read (logged).
func (p *podCIDRSource) read(ctx context.Context) []netip.Prefix {
	var node corev1.Node
	if err := p.reader.Get(ctx, client.ObjectKey{Name: p.node}, &node); err != nil {
		p.log.Error(err, "reading the node's pod CIDRs; pod addresses are not guarded until it succeeds", "node", p.node)
		return nil
	}
	specs := node.Spec.PodCIDRs
	if len(specs) == 0 && node.Spec.PodCIDR != "" {
		specs = []string{node.Spec.PodCIDR}
	}
	var cidrs []netip.Prefix
	for _, s := range specs {
		c, err := netip.ParsePrefix(s)
		if err != nil {
			p.log.Error(err, "ignoring an unreadable pod CIDR of the node", "node", p.node, "podCIDR", s)
			continue
		}
		cidrs = append(cidrs, c.Masked())
	}
	if len(cidrs) == 0 {
		if !p.toldNone {
			p.log.Info("the node has no spec.podCIDRs: pod addresses are not guarded (give --pod-cidrs for an IPAM that does not use them)", "node", p.node)
			p.toldNone = true
		}
		return nil
	}
	p.log.Info("guarding the node's pod addresses: traffic of an address no local pod has yet is dropped", "podCIDRs", cidrs)
	return cidrs
}

// podAddrGuard is the guard a sync commits: the pod CIDRs and the
// addresses of the node's endpoint pods the Builder holds now, hinted
// ones included, so an address becomes known in the very transaction
// that installs its pod's rules.
func (s *Syncer) podAddrGuard(ctx context.Context) selectors.PodAddrGuard {
	cidrs := s.podCIDRs.cidrs(ctx)
	if len(cidrs) == 0 {
		return selectors.PodAddrGuard{}
	}
	return selectors.PodAddrGuard{PodCIDRs: cidrs, Known: s.cached.builder.LocalAddrs()}
}
