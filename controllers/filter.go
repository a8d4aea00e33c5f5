package controllers

import (
	"reflect"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/nftpol/nftpol/selectors"
)

// modelInputChanged filters update events: a sync reads the whole cluster,
// so an update that leaves everything the model reads of the object as it
// was (a condition, an annotation, a container status, a periodic resync)
// must not cost one. It compares exactly what selectors reads: the
// converted pod and namespace, the policy's spec and audit mode. Creates and deletes
// always pass.
func modelInputChanged() predicate.Predicate {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool { return modelInputDiffers(e.ObjectOld, e.ObjectNew) },
	}
}

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
