package controllers

import (
	"reflect"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpol/nftpol/selectors"
)

// modelInputDiffers tells the update events that matter: a sync costs
// CPU, so an update that leaves everything the model reads of the object
// as it was (a condition, an annotation, a container status, a periodic
// resync) must not cost one. It compares exactly what selectors reads:
// the converted pod and namespace, the policy's spec and audit mode. The
// event handlers (cacheState.addHandler) always pass creates and deletes.
func modelInputDiffers(old, new client.Object) bool {
	if o, ok := modelPod(old); ok {
		n, ok := modelPod(new)
		return !ok || !reflect.DeepEqual(o, n)
	}
	switch o := old.(type) {
	case *corev1.Namespace:
		n, ok := new.(*corev1.Namespace)
		return !ok || !reflect.DeepEqual(selectors.NamespaceFromObject(o), selectors.NamespaceFromObject(n))
	case *networkingv1.NetworkPolicy:
		n, ok := new.(*networkingv1.NetworkPolicy)
		return !ok || !equality.Semantic.DeepEqual(o.Spec, n.Spec) || selectors.ModeChanged(o.Annotations, n.Annotations)
	}
	return true
}
