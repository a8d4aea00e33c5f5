package controllers

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
)

// cacheState reads the cluster for a sync straight from the agent's
// informer stores: no list copies the objects, and the pods there are
// already in the model's form (cachedPod), converted once per version.
// Reading the cache through the client instead was half of every sync's
// time at 10k pods (profile in BENCHMARKS.md).
//
// Pods are not listed at all: an event handler on the pod informer
// records the keys of the pods that changed, and each sync hands only
// those to the Builder (SetPod, DeletePod), which keeps the pod index and
// the address owner table between syncs. A sync after one pod change thus
// reads one pod, not every pod of the cluster.
type cacheState struct {
	cache cache.Cache
	// clusterPolicies, when active, adds the ClusterNetworkPolicies and
	// Nodes to the state.
	clusterPolicies *clusterPolicyWatch

	// builder holds the pods; the syncer builds every model with it.
	// Only the syncer's goroutine uses it, except the owner table, which
	// the denied-packet log reads under ownersMu.
	builder  *selectors.Builder
	ownersMu sync.RWMutex

	// mu guards pending, the keys of the pods changed since the last
	// sync.
	mu      sync.Mutex
	pending map[string]struct{}
	// handler is the registration of the pod event handler; podSync is
	// how it asks for a sync, only after it recorded the key, so the sync
	// always finds the change (a controller watch of its own on pods
	// could run the sync before this handler heard of the event).
	handler toolscache.ResourceEventHandlerRegistration
	podSync chan event.GenericEvent
	// podStart, when the CNI plugin's socket is served, puts the
	// addresses of starting pods on them (podstart.go); nil does nothing.
	podStart *podStartHints
}

func newCacheState(c cache.Cache) *cacheState {
	return &cacheState{cache: c, builder: selectors.NewBuilder(), pending: map[string]struct{}{},
		podSync: make(chan event.GenericEvent, 1)}
}

// storeOf returns the store behind the informer of obj's type.
func (c *cacheState) storeOf(ctx context.Context, obj client.Object) (toolscache.Store, error) {
	inf, err := c.cache.GetInformer(ctx, obj)
	if err != nil {
		return nil, fmt.Errorf("getting the informer of %T: %w", obj, err)
	}
	withStore, ok := inf.(interface{ GetStore() toolscache.Store })
	if !ok {
		return nil, fmt.Errorf("the informer of %T has no store", obj)
	}
	return withStore.GetStore(), nil
}

// podChanged records the key of a pod an informer event concerns, then
// asks for a sync.
func (c *cacheState) podChanged(obj any) {
	key, err := toolscache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return // not an object: nothing the store could hold either
	}
	c.podKeyChanged(key)
}

// podKeyChanged records a pod key for the next sync to read, then asks
// for that sync.
func (c *cacheState) podKeyChanged(key string) {
	c.mu.Lock()
	c.pending[key] = struct{}{}
	c.mu.Unlock()
	select {
	case c.podSync <- event.GenericEvent{Object: &corev1.Pod{}}:
	default: // a sync is asked for already, and will read the key
	}
}

// podUpdated is podChanged for the updates that change what the model
// reads of the pod (see modelInputDiffers).
func (c *cacheState) podUpdated(old, new any) {
	o, okOld := old.(client.Object)
	n, okNew := new.(client.Object)
	if okOld && okNew && !modelInputDiffers(o, n) {
		return
	}
	c.podChanged(new)
}

// watchPodEvents registers the pod event handler; before the cache
// starts, so it hears of every pod.
func (c *cacheState) watchPodEvents(ctx context.Context) error {
	inf, err := c.cache.GetInformer(ctx, &corev1.Pod{})
	if err != nil {
		return fmt.Errorf("getting the informer of pods: %w", err)
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    c.podChanged,
		UpdateFunc: c.podUpdated,
		DeleteFunc: c.podChanged,
	})
	if err != nil {
		return fmt.Errorf("watching pod events: %w", err)
	}
	c.mu.Lock()
	c.handler = reg
	c.mu.Unlock()
	return nil
}

// watchPods waits until the pod event handler was told of every pod
// already in the store, so the first sync sees them all.
func (c *cacheState) watchPods(ctx context.Context) error {
	c.mu.Lock()
	reg := c.handler
	c.mu.Unlock()
	if reg == nil {
		return fmt.Errorf("the pod event handler is not registered")
	}
	// Bounded by ctx.
	for !reg.HasSynced() {
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the pod event handler: %w", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// applyPodChanges hands the Builder the pods changed since the last sync,
// as the store holds them now (a key no longer in the store is a deleted
// pod).
func (c *cacheState) applyPodChanges(ctx context.Context) error {
	if err := c.watchPods(ctx); err != nil {
		return err
	}
	pods, err := c.storeOf(ctx, &corev1.Pod{})
	if err != nil {
		return err
	}
	c.mu.Lock()
	keys := c.pending
	c.pending = make(map[string]struct{}, min(len(keys), 1024))
	c.mu.Unlock()
	for _, key := range c.podStart.expired() {
		keys[key] = struct{}{}
	}

	c.ownersMu.Lock()
	defer c.ownersMu.Unlock()
	for key := range keys {
		obj, exists, err := pods.GetByKey(key)
		if err != nil {
			// Not read: retried by the next sync, which this error causes.
			c.requeue(keys)
			return fmt.Errorf("reading pod %s from the cache: %w", key, err)
		}
		var p *selectors.Pod
		if mp, ok := modelPod(obj); exists && ok {
			p = mp
		}
		if p = c.podStart.pod(key, p); p != nil {
			c.builder.SetPod(p)
			continue
		}
		ns, name, err := toolscache.SplitMetaNamespaceKey(key)
		if err == nil {
			c.builder.DeletePod(ns, name)
		}
	}
	return nil
}

// requeue puts keys back among the pending ones.
func (c *cacheState) requeue(keys map[string]struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range keys {
		c.pending[k] = struct{}{}
	}
}

// ownerName names the pod that owns an address, for the denied-packet
// log; it may run during a sync.
func (c *cacheState) ownerName(a netip.Addr) (string, bool) {
	c.ownersMu.RLock()
	defer c.ownersMu.RUnlock()
	if p, ok := c.builder.Owner(a); ok {
		return p.Key(), true
	}
	return "", false
}

// Read brings the Builder's pods up to date and returns the rest of the
// cluster as the model takes it: its Pods are nil, the model is built with
// builder.BuildFromEvents. Only the syncer calls it, one sync at a time.
func (c *cacheState) Read(ctx context.Context) (*selectors.State, error) {
	if err := c.applyPodChanges(ctx); err != nil {
		return nil, err
	}
	namespaces, err := c.storeOf(ctx, &corev1.Namespace{})
	if err != nil {
		return nil, err
	}
	policies, err := c.storeOf(ctx, &networkingv1.NetworkPolicy{})
	if err != nil {
		return nil, err
	}
	nsObjs, polObjs := namespaces.List(), policies.List()
	state := &selectors.State{
		Namespaces: make([]*selectors.Namespace, 0, len(nsObjs)),
		Policies:   make([]*networkingv1.NetworkPolicy, 0, len(polObjs)),
	}
	for _, o := range nsObjs {
		if ns, ok := o.(*corev1.Namespace); ok {
			state.Namespaces = append(state.Namespaces, selectors.NamespaceFromObject(ns))
		}
	}
	for _, o := range polObjs {
		if np, ok := o.(*networkingv1.NetworkPolicy); ok {
			state.Policies = append(state.Policies, np)
		}
	}
	if c.clusterPolicies.Active() {
		cnps, err := c.storeOf(ctx, &cnpv1beta1.ClusterNetworkPolicy{})
		if err != nil {
			return nil, err
		}
		nodes, err := c.storeOf(ctx, &corev1.Node{})
		if err != nil {
			return nil, err
		}
		state.ClusterPolicies = []*cnpv1beta1.ClusterNetworkPolicy{}
		for _, o := range cnps.List() {
			if cnp, ok := o.(*cnpv1beta1.ClusterNetworkPolicy); ok {
				state.ClusterPolicies = append(state.ClusterPolicies, cnp)
			}
		}
		for _, o := range nodes.List() {
			if n, ok := o.(*corev1.Node); ok {
				state.Nodes = append(state.Nodes, selectors.NodeFromObject(n))
			}
		}
	}
	return state, nil
}
