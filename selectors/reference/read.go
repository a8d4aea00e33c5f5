package reference

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Read lists the objects a decision reads, as the API server holds them
// (not the agent's conversion of them). Node addresses are left out: they
// matter only for traffic from a node, and the callers (`nftpol explain`,
// the testbed's matrices) decide traffic from pods.
func Read(ctx context.Context, r client.Reader) (*Cluster, error) {
	var pods corev1.PodList
	if err := r.List(ctx, &pods); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	var namespaces corev1.NamespaceList
	if err := r.List(ctx, &namespaces); err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	var policies networkingv1.NetworkPolicyList
	if err := r.List(ctx, &policies); err != nil {
		return nil, fmt.Errorf("listing network policies: %w", err)
	}
	cl := &Cluster{}
	for i := range pods.Items {
		cl.Pods = append(cl.Pods, &pods.Items[i])
	}
	for i := range namespaces.Items {
		cl.Namespaces = append(cl.Namespaces, &namespaces.Items[i])
	}
	for i := range policies.Items {
		cl.Policies = append(cl.Policies, &policies.Items[i])
	}
	return cl, nil
}
