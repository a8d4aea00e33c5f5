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
	// pendingPolicies, policyHandler and policySync are the same for
	// NetworkPolicies: a sync hands the Builder the policies that changed
	// only, not every policy of the cluster (guarded by mu too).
	pendingPolicies map[string]struct{}
	policyHandler   toolscache.ResourceEventHandlerRegistration
	policySync      chan event.GenericEvent
	// pendingNamespaces, namespaceHandler and namespaceSync are the same
	// for namespaces: a sync hands the Builder the namespaces that
	// changed, not a list of every namespace (guarded by mu too).
	pendingNamespaces map[string]struct{}
	namespaceHandler  toolscache.ResourceEventHandlerRegistration
	namespaceSync     chan event.GenericEvent
	// podStart, when the CNI plugin's socket is served, puts the
	// addresses of starting pods on them (podstart.go); nil does nothing.
	podStart *podStartHints
}

func newCacheState(c cache.Cache) *cacheState {
	return &cacheState{cache: c, builder: selectors.NewBuilder(), pending: map[string]struct{}{},
		podSync: make(chan event.GenericEvent, 1), pendingPolicies: map[string]struct{}{},
		policySync: make(chan event.GenericEvent, 1), pendingNamespaces: map[string]struct{}{},
		namespaceSync: make(chan event.GenericEvent, 1)}
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

// onModelInputChange returns an update handler that calls changed for
// the updates that change what the model reads of the object (see
// modelInputDiffers) and ignores the others.
func onModelInputChange(changed func(any)) func(old, new any) {
	return func(old, new any) {
		o, okOld := old.(client.Object)
		n, okNew := new.(client.Object)
		if okOld && okNew && !modelInputDiffers(o, n) {
			return
		}
		changed(new)
	}
}

// policyChanged records the key of a NetworkPolicy an informer event
// concerns, then asks for a sync.
func (c *cacheState) policyChanged(obj any) {
	c.keyChanged(obj, c.pendingPolicies, c.policySync, &networkingv1.NetworkPolicy{})
}

// namespaceChanged records the name of a namespace an informer event
// concerns, then asks for a sync.
func (c *cacheState) namespaceChanged(obj any) {
	c.keyChanged(obj, c.pendingNamespaces, c.namespaceSync, &corev1.Namespace{})
}

// keyChanged records the key of obj in pending (guarded by mu), then asks
// for a sync on sync with an event of kind's type.
func (c *cacheState) keyChanged(obj any, pending map[string]struct{}, sync chan event.GenericEvent, kind client.Object) {
	key, err := toolscache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		return
	}
	c.mu.Lock()
	pending[key] = struct{}{}
	c.mu.Unlock()
	select {
	case sync <- event.GenericEvent{Object: kind}:
	default: // a sync is asked for already, and will read the key
	}
}

// watchPodEvents registers the pod, NetworkPolicy and namespace event
// handlers; before the cache starts, so they hear of every object.
func (c *cacheState) watchPodEvents(ctx context.Context) error {
	pods, err := c.addHandler(ctx, &corev1.Pod{}, c.podChanged)
	if err != nil {
		return err
	}
	policies, err := c.addHandler(ctx, &networkingv1.NetworkPolicy{}, c.policyChanged)
	if err != nil {
		return err
	}
	namespaces, err := c.addHandler(ctx, &corev1.Namespace{}, c.namespaceChanged)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.handler, c.policyHandler, c.namespaceHandler = pods, policies, namespaces
	c.mu.Unlock()
	return nil
}

// addHandler registers changed on the informer of obj's type, for adds,
// deletes and the updates the model reads.
func (c *cacheState) addHandler(ctx context.Context, obj client.Object, changed func(any)) (toolscache.ResourceEventHandlerRegistration, error) {
	inf, err := c.cache.GetInformer(ctx, obj)
	if err != nil {
		return nil, fmt.Errorf("getting the informer of %T: %w", obj, err)
	}
	reg, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    changed,
		UpdateFunc: onModelInputChange(changed),
		DeleteFunc: changed,
	})
	if err != nil {
		return nil, fmt.Errorf("watching the events of %T: %w", obj, err)
	}
	return reg, nil
}

// watchPods waits until the pod and policy event handlers were told of
// every object already in their stores, so the first sync sees them all.
func (c *cacheState) watchPods(ctx context.Context) error {
	c.mu.Lock()
	regs := []toolscache.ResourceEventHandlerRegistration{c.handler, c.policyHandler, c.namespaceHandler}
	c.mu.Unlock()
	for _, reg := range regs {
		if reg == nil {
			return fmt.Errorf("the pod, policy or namespace event handler is not registered")
		}
		// Bounded by ctx.
		for !reg.HasSynced() {
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for the pod, policy and namespace event handlers: %w", ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}

// applyPolicyChanges hands the Builder the NetworkPolicies changed since
// the last sync, as the store holds them now (a key no longer in the
// store is a deleted policy).
func (c *cacheState) applyPolicyChanges(ctx context.Context) error {
	return c.applyKeyChanges(ctx, &networkingv1.NetworkPolicy{}, &c.pendingPolicies, func(obj any) bool {
		np, ok := obj.(*networkingv1.NetworkPolicy)
		if ok {
			c.builder.SetPolicy(np)
		}
		return ok
	}, c.builder.DeletePolicy)
}

// applyNamespaceChanges hands the Builder the namespaces changed since
// the last sync, likewise.
func (c *cacheState) applyNamespaceChanges(ctx context.Context) error {
	return c.applyKeyChanges(ctx, &corev1.Namespace{}, &c.pendingNamespaces, func(obj any) bool {
		ns, ok := obj.(*corev1.Namespace)
		if ok {
			c.builder.SetNamespace(selectors.NamespaceFromObject(ns))
		}
		return ok
	}, func(_, name string) { c.builder.DeleteNamespace(name) })
}

// applyKeyChanges takes the keys in *pending (guarded by mu) and reads
// each from the store of kind's type: set is given the object when the
// store holds it (and reports whether it was of the expected type),
// deleted the key's namespace and name when not. On an error the keys
// go back to *pending, for the next sync.
func (c *cacheState) applyKeyChanges(ctx context.Context, kind client.Object, pending *map[string]struct{}, set func(any) bool, deleted func(namespace, name string)) error {
	store, err := c.storeOf(ctx, kind)
	if err != nil {
		return err
	}
	c.mu.Lock()
	keys := *pending
	*pending = map[string]struct{}{}
	c.mu.Unlock()
	for key := range keys {
		obj, exists, err := store.GetByKey(key)
		if err != nil {
			c.mu.Lock()
			for k := range keys {
				(*pending)[k] = struct{}{}
			}
			c.mu.Unlock()
			return fmt.Errorf("reading %T %s from the cache: %w", kind, key, err)
		}
		if exists && set(obj) {
			continue
		}
		if ns, name, err := toolscache.SplitMetaNamespaceKey(key); err == nil {
			deleted(ns, name)
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

// Read brings the Builder's pods, NetworkPolicies and namespaces up to
// date and returns the rest of the cluster as the model takes it: its
// Pods, Policies and Namespaces are nil, the model is built with
// builder.BuildFromEvents. Only
// the syncer calls it, one sync at a time.
func (c *cacheState) Read(ctx context.Context) (*selectors.State, error) {
	if err := c.applyPodChanges(ctx); err != nil {
		return nil, err
	}
	if err := c.applyPolicyChanges(ctx); err != nil {
		return nil, err
	}
	if err := c.applyNamespaceChanges(ctx); err != nil {
		return nil, err
	}
	state := &selectors.State{}
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
