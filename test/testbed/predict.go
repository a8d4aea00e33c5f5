package testbed

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpol/nftpol/selectors/reference"
)

// ReadCluster lists the objects the reference evaluator reads, as the API
// server holds them (not the agent's conversion of them). Node addresses
// are left out: matrices only probe from pod to pod.
func ReadCluster(ctx context.Context, r client.Reader) (*reference.Cluster, error) {
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
	cl := &reference.Cluster{}
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

// PredictMatrix is the matrix the reference evaluator predicts for spec
// over pods, from the cluster's objects (ReadCluster). The cell of a pod
// to itself is the evaluator's too: it always allows it.
func PredictMatrix(cl *reference.Cluster, pods []*Pod, spec ProbeSpec) *Matrix {
	proto := corev1.ProtocolTCP
	if spec.Proto == UDP {
		proto = corev1.ProtocolUDP
	}
	keys := make([]string, len(pods))
	for i, p := range pods {
		keys[i] = p.Key()
	}
	m := NewMatrix(keys, true)
	for _, from := range pods {
		for _, to := range pods {
			v := reference.Evaluate(cl, reference.Packet{Src: from.Addr(spec.Family), Dst: to.Addr(spec.Family), Protocol: proto, Port: int32(spec.Port)})
			m.Set(from.Key(), to.Key(), v.Allowed)
		}
	}
	return m
}
