package reference

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Read lists the objects a decision reads, as the API server holds them
// (not the agent's conversion of them): pods, namespaces, nodes,
// NetworkPolicies and ClusterNetworkPolicies. NodeAddresses is left empty:
// the Node objects' status.addresses stand for it.
//
// A cluster without the ClusterNetworkPolicy CRD has no such policies: the
// API server not serving the resource reads as none. The reader's scheme
// must know the type (the agent's and the testbed's do).
func Read(ctx context.Context, r client.Reader) (*Cluster, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	var namespaces corev1.NamespaceList
	if err := r.List(ctx, &namespaces); err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes); err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	var policies networkingv1.NetworkPolicyList
	if err := r.List(ctx, &policies); err != nil {
		return nil, fmt.Errorf("listing network policies: %w", err)
	}
	var cnps policyv1beta1.ClusterNetworkPolicyList
	if err := r.List(ctx, &cnps); err != nil && !meta.IsNoMatchError(err) && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("listing cluster network policies: %w", err)
	}
	cl := &Cluster{}
	for i := range pods.Items {
		cl.Pods = append(cl.Pods, &pods.Items[i])
	}
	for i := range namespaces.Items {
		cl.Namespaces = append(cl.Namespaces, &namespaces.Items[i])
	}
	for i := range nodes.Items {
		cl.Nodes = append(cl.Nodes, &nodes.Items[i])
	}
	for i := range policies.Items {
		cl.Policies = append(cl.Policies, &policies.Items[i])
	}
	for i := range cnps.Items {
		cl.ClusterPolicies = append(cl.ClusterPolicies, &cnps.Items[i])
	}
	return cl, nil
}
