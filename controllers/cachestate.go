package controllers

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
)

// cacheState reads the cluster for a sync straight from the agent's
// informer stores: no list copies the objects, and the pods there are
// already in the model's form (cachedPod), converted once per version.
// Reading the cache through the client instead was half of every sync's
// time at 10k pods (profile in BENCHMARKS.md).
type cacheState struct {
	cache cache.Cache
	// clusterPolicies, when active, adds the ClusterNetworkPolicies and
	// Nodes to the state.
	clusterPolicies *clusterPolicyWatch
}

func newCacheState(c cache.Cache) *cacheState {
	return &cacheState{cache: c}
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
	for _, o := range podObjs {
		if p, ok := modelPod(o); ok {
			state.Pods = append(state.Pods, p)
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
