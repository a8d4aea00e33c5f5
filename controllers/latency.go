package controllers

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// The kinds of change the programming-latency histogram tells apart: the
// watched object whose event asked for a sync.
const (
	ChangePod                = "pod"
	ChangeNamespace          = "namespace"
	ChangeNetworkPolicy      = "networkpolicy"
	ChangeClusterPolicy      = "clusternetworkpolicy"
	ChangeNode               = "node"
	ChangeClusterPolicyAPI   = "clusternetworkpolicy-api"
	programmingLatencyMetric = "nftpol_programming_latency_seconds"
	oldestPendingMetric      = "nftpol_oldest_pending_change_seconds"
)

// change is one event that asked for a sync, with when the agent got it.
type change struct {
	kind     string
	received time.Time
}

// latencyTracker measures how long a change takes to reach the kernel:
// from the event (after the cache holds the object, and only when the
// change matters to the model: see modelInputDiffers) to the commit of
// the first sync that started after it. Events arrive on informer
// goroutines while a sync runs; a sync takes what was received before it
// read the cache, so everything it takes is enforced by its commit.
type latencyTracker struct {
	now     func() time.Time
	latency *prometheus.HistogramVec

	mu sync.Mutex
	// pending were received since the last sync started; taken were
	// taken by a sync that has not committed yet (a failed sync keeps
	// them for the next one, which retries).
	pending, taken []change
}

func newLatencyTracker(reg prometheus.Registerer) (*latencyTracker, error) {
	t := &latencyTracker{
		now: time.Now,
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: programmingLatencyMetric,
			Help: "Time from the agent receiving a change (pod, namespace, policy, cluster policy, node event) to the commit of the transaction that enforces it, by kind of change.",
			// 0.5 ms to about 16 s.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"kind"}),
	}
	oldest := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: oldestPendingMetric,
		Help: "Age of the oldest change received and not yet committed; 0 when every change is in force.",
	}, t.oldestAge)
	for _, c := range []prometheus.Collector{t.latency, oldest} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering latency metrics: %w", err)
		}
	}
	return t, nil
}

// received records a change.
func (t *latencyTracker) received(kind string) {
	if t == nil {
		return
	}
	now := t.now()
	t.mu.Lock()
	t.pending = append(t.pending, change{kind: kind, received: now})
	t.mu.Unlock()
}

// take is called by a sync before it reads the cache.
func (t *latencyTracker) take() {
	if t == nil {
		return
	}
	t.mu.Lock()
	t.taken = append(t.taken, t.pending...)
	t.pending = t.pending[:0]
	t.mu.Unlock()
}

// committed is called once the sync's transaction is committed: every
// change it took is now in force.
func (t *latencyTracker) committed() {
	if t == nil {
		return
	}
	t.mu.Lock()
	taken := t.taken
	t.taken = nil
	t.mu.Unlock()
	now := t.now()
	for _, c := range taken {
		t.latency.WithLabelValues(c.kind).Observe(now.Sub(c.received).Seconds())
	}
}

// oldestAge is the gauge's value, computed at scrape time.
func (t *latencyTracker) oldestAge() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var oldest time.Time
	// Both lists are in order of arrival, and taken ones arrived first.
	switch {
	case len(t.taken) > 0:
		oldest = t.taken[0].received
	case len(t.pending) > 0:
		oldest = t.pending[0].received
	default:
		return 0
	}
	return t.now().Sub(oldest).Seconds()
}

// enqueueChange returns the event handler of one watched kind: it records
// the change and asks for the node's sync. (A map-function handler would
// not do: it maps both objects of an update, counting it twice.)
func (t *latencyTracker) enqueueChange(kind string) handler.EventHandler {
	changed := func(q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
		t.received(kind)
		q.Add(syncKey)
	}
	return handler.Funcs{
		CreateFunc: func(_ context.Context, _ event.CreateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			changed(q)
		},
		UpdateFunc: func(_ context.Context, _ event.UpdateEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			changed(q)
		},
		DeleteFunc: func(_ context.Context, _ event.DeleteEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			changed(q)
		},
		GenericFunc: func(_ context.Context, _ event.GenericEvent, q workqueue.TypedRateLimitingInterface[reconcile.Request]) {
			changed(q)
		},
	}
}
