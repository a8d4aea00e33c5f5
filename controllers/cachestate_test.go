package controllers

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestNamespaceEventsReachTheKernel relabels a namespace out of and back
// into a policy's namespaceSelector: the Builder hears of namespaces by
// the informer's events only (cacheState), so each relabel must reach the
// peer set through them, IPv4 and IPv6.
func TestNamespaceEventsReachTheKernel(t *testing.T) {
	a := startAgent(t, "node-a")
	k := a.kernel

	a.createNamespace(t, "ne-srv", nil)
	a.createNamespace(t, "ne-cli", map[string]string{"team": "a"})
	a.createPod(t, "ne-srv", "server", "node-a", map[string]string{"app": "server"}, "10.3.0.10", "fd00:3::10")
	a.createPod(t, "ne-cli", "client", "node-b", nil, "10.3.0.20", "fd00:3::20")
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ne-srv", Name: "from-team-a"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}},
			}},
		},
	}
	if err := a.client.Create(a.ctx, pol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the server is isolated", wantKeys(k, "ingress_v4", "10.3.0.10"))
	eventually(t, "the client's namespace is a peer", wantInSomeSet(k, "10.3.0.20", true))
	eventually(t, "the client's namespace is a peer (IPv6)", wantInSomeSet(k, "fd00:3::20", true))

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ne-cli"}}
	a.relabel(t, ns, map[string]string{"team": "b"})
	eventually(t, "relabeled out of the selector", wantInSomeSet(k, "10.3.0.20", false))
	eventually(t, "relabeled out of the selector (IPv6)", wantInSomeSet(k, "fd00:3::20", false))

	a.relabel(t, ns, map[string]string{"team": "a", "other": "x"})
	eventually(t, "relabeled back into the selector", wantInSomeSet(k, "10.3.0.20", true))
	eventually(t, "relabeled back into the selector (IPv6)", wantInSomeSet(k, "fd00:3::20", true))
}
