package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpol/nftpol/selectors"
)

// cacheState reads the cluster for a sync straight from the agent's
// informer stores: no list copies the objects, and a pod is converted to
// the model's form once per version, not once per sync. At 10k pods this
// was half of every sync's time (profile in BENCHMARKS.md).
type cacheState struct {
	cache cache.Cache
	// pods remembers the conversion of every pod by UID, with the version
	// it was made from; gen marks the entries seen by the current read so
	// that the rest (deleted pods) can be dropped.
	pods map[types.UID]*convertedPod
	gen  uint64
}

type convertedPod struct {
	resourceVersion string
	pod             *selectors.Pod
	gen             uint64
}

func newCacheState(c cache.Cache) *cacheState {
	return &cacheState{cache: c, pods: map[types.UID]*convertedPod{}}
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

// Read returns the cluster as the model takes it. Only the syncer calls
// it, one sync at a time.
func (c *cacheState) Read(ctx context.Context) (*selectors.State, error) {
	pods, err := c.storeOf(ctx, &corev1.Pod{})
	if err != nil {
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
	podObjs, nsObjs, polObjs := pods.List(), namespaces.List(), policies.List()
	state := &selectors.State{
		Pods:       make([]*selectors.Pod, 0, len(podObjs)),
		Namespaces: make([]*selectors.Namespace, 0, len(nsObjs)),
		Policies:   make([]*networkingv1.NetworkPolicy, 0, len(polObjs)),
	}
	c.gen++
	for _, o := range podObjs {
		p, ok := o.(*corev1.Pod)
		if !ok {
			continue
		}
		conv := c.pods[p.UID]
		if conv == nil || conv.resourceVersion != p.ResourceVersion {
			conv = &convertedPod{resourceVersion: p.ResourceVersion, pod: selectors.PodFromObject(p)}
			c.pods[p.UID] = conv
		}
		conv.gen = c.gen
		state.Pods = append(state.Pods, conv.pod)
	}
	if len(c.pods) > len(state.Pods) {
		for uid, conv := range c.pods {
			if conv.gen != c.gen {
				delete(c.pods, uid)
			}
		}
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
	return state, nil
}
