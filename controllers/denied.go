package controllers

import (
	"context"
	"net/netip"
	"sync"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
)

// podLookup is what the denied-packet log needs: pod names by address
// and the policies isolating each local pod at the last sync.
type podLookup struct {
	// owner names the pod that owns an address: the one the model
	// enforces for it, so the log names the same pod. The Builder keeps
	// that table pod by pod; nothing is copied per sync.
	owner     func(netip.Addr) (string, bool)
	isolation map[string]*selectors.PodRules
}

func newPodLookup(owner func(netip.Addr) (string, bool), model *selectors.Model) *podLookup {
	l := &podLookup{owner: owner, isolation: make(map[string]*selectors.PodRules, len(model.Pods))}
	for i := range model.Pods {
		l.isolation[model.Pods[i].Key] = &model.Pods[i]
	}
	return l
}

func (l *podLookup) name(a netip.Addr) string {
	if l.owner != nil {
		if key, ok := l.owner(a); ok {
			return key
		}
	}
	return a.String()
}

// flowMemory is how long a denied flow is remembered, so that its
// retransmissions are not logged again.
const flowMemory = 10 * time.Second

// maxFlows bounds the memory of logged flows under a flood.
const maxFlows = 10_000

type flowKey struct {
	dir      selectors.Direction
	src, dst netip.Addr
	proto    selectors.Protocol
	port     uint16
	// wouldDeny and policy tell a policy in audit mode apart: one flow
	// can be would-deny for several.
	wouldDeny bool
	policy    string
}

// DeniedLogger writes one log line per denied flow, from the NFLOG group
// the deny paths log to (nftpol --log-denied), and one "would-deny" line
// per flow and policy in audit mode that would have denied it.
type DeniedLogger struct {
	NetNSPath string
	Group     uint16
	Syncer    *Syncer
	Log       logr.Logger

	mu   sync.Mutex
	seen map[flowKey]time.Time
}

// Start reads denied packets until ctx ends. A failing reader is retried:
// the log is a diagnosis aid and never stops enforcement.
func (d *DeniedLogger) Start(ctx context.Context) error {
	// The NFLOG group belongs to the agent that holds the table lock; a
	// waiting agent binding it would only fail (EPERM) or steal it.
	if !d.Syncer.guard.wait(ctx) {
		return nil
	}
	for ctx.Err() == nil {
		err := nft.ReadDenied(ctx, d.NetNSPath, d.Group, d.handle)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		d.Log.Error(err, "reading denied packets; retrying in 5s")
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
	return nil
}

func (d *DeniedLogger) handle(p nft.DeniedPacket) {
	key := flowKey{p.Direction, p.Src, p.Dst, p.Protocol, p.Port, p.WouldDeny, p.Policy}
	now := time.Now()
	d.mu.Lock()
	if d.seen == nil || len(d.seen) >= maxFlows {
		d.forgetOld(now)
	}
	if t, ok := d.seen[key]; ok && now.Sub(t) < flowMemory {
		d.mu.Unlock()
		return
	}
	d.seen[key] = now
	d.mu.Unlock()

	lookup := d.Syncer.lookup.Load()
	if lookup == nil {
		lookup = &podLookup{}
	}
	local := p.Dst
	if p.Direction == selectors.Egress {
		local = p.Src
	}
	if p.WouldDeny {
		// Allowed: a policy in audit mode would have denied it.
		d.Log.Info("would-deny", "direction", p.Direction.String(), "src", lookup.name(p.Src), "dst", lookup.name(p.Dst),
			"srcIP", p.Src.String(), "dstIP", p.Dst.String(), "protocol", p.Protocol.String(), "port", p.Port,
			"policy", p.Policy)
		return
	}
	if p.Policy != "" {
		d.Log.Info("denied", "direction", p.Direction.String(), "src", lookup.name(p.Src), "dst", lookup.name(p.Dst),
			"srcIP", p.Src.String(), "dstIP", p.Dst.String(), "protocol", p.Protocol.String(), "port", p.Port,
			"clusterNetworkPolicy", p.Policy)
		return
	}
	var isolatedBy []string
	if pr := lookup.isolation[lookup.name(local)]; pr != nil {
		isolatedBy = pr.Ingress
		if p.Direction == selectors.Egress {
			isolatedBy = pr.Egress
		}
	}
	d.Log.Info("denied", "direction", p.Direction.String(), "src", lookup.name(p.Src), "dst", lookup.name(p.Dst),
		"srcIP", p.Src.String(), "dstIP", p.Dst.String(), "protocol", p.Protocol.String(), "port", p.Port, "isolatedBy", isolatedBy)
}

// forgetOld drops remembered flows past flowMemory; if a flood keeps the
// table full of fresh flows, it starts over rather than grow.
func (d *DeniedLogger) forgetOld(now time.Time) {
	if d.seen == nil {
		d.seen = map[flowKey]time.Time{}
		return
	}
	for k, t := range d.seen {
		if now.Sub(t) >= flowMemory {
			delete(d.seen, k)
		}
	}
	if len(d.seen) >= maxFlows {
		d.seen = map[flowKey]time.Time{}
	}
}
