package controllers

import (
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpol/nftpol/selectors"
)

// cachedPod is all the agent's cache keeps of a pod: the identity the
// informer keys and versions it by, and the pod as the policy model reads
// it (labels, node, host networking, phase, addresses, named ports).
// Everything else of a pod (most of its bytes: images, env, volumes,
// managed fields, conditions) never reaches the cache, and neither do the
// empty structs of a corev1.Pod: a cachedPod is about 350 bytes where the
// smallest *corev1.Pod is 1.2 KB before its containers. The informer store
// holds these, so a sync reads the model's pods without converting any.
type cachedPod struct {
	metav1.ObjectMeta
	// Model is shared with every sync that reads it and never changed:
	// an update of the pod brings a new cachedPod.
	Model *selectors.Pod
}

// GetObjectKind implements runtime.Object; the cache needs no kind.
func (p *cachedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject implements runtime.Object.
func (p *cachedPod) DeepCopyObject() runtime.Object {
	out := &cachedPod{}
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	if p.Model != nil {
		m := *p.Model
		m.Labels = maps.Clone(m.Labels)
		m.IPs = slices.Clone(m.IPs)
		m.Ports = slices.Clone(m.Ports)
		out.Model = &m
	}
	return out
}

// modelPod returns the pod as the model reads it from a cache entry or a
// pod, and false for anything else.
func modelPod(obj any) (*selectors.Pod, bool) {
	switch p := obj.(type) {
	case *cachedPod:
		return p.Model, true
	case *corev1.Pod:
		return selectors.PodFromObject(p), true
	}
	return nil, false
}

// podTrimmer is the cache transform for pods: it turns each into a
// cachedPod, and shares one labels map among all pods with equal labels
// (the pods of one workload carry the same labels).
type podTrimmer struct {
	mu     sync.Mutex
	labels map[string]map[string]string
}

// maxInternedLabelSets bounds the interner: past it, it starts over (the
// maps already shared stay shared; new pods are interned anew).
const maxInternedLabelSets = 50_000

func newPodTrimmer() *podTrimmer {
	return &podTrimmer{labels: map[string]map[string]string{}}
}

// Transform is the cache transform. Tombstones and other types pass
// through untouched.
func (t *podTrimmer) Transform(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	model := selectors.PodFromObject(pod)
	model.Labels = t.intern(model.Labels)
	return &cachedPod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            pod.Name,
			Namespace:       pod.Namespace,
			UID:             pod.UID,
			ResourceVersion: pod.ResourceVersion,
		},
		Model: model,
	}, nil
}

func (t *podTrimmer) intern(l map[string]string) map[string]string {
	if len(l) == 0 {
		return nil
	}
	keys := make([]string, 0, len(l))
	for k := range l {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(l[k])
		b.WriteByte(0)
	}
	key := b.String()
	t.mu.Lock()
	defer t.mu.Unlock()
	if shared, ok := t.labels[key]; ok {
		return shared
	}
	if len(t.labels) >= maxInternedLabelSets {
		t.labels = map[string]map[string]string{}
	}
	t.labels[key] = l
	return l
}

// TrimMeta drops the parts of namespaces and policies the agent never reads:
// managed fields and annotations (kubectl's last-applied copy doubles the
// size of every applied object), but a policy's audit mode
// (selectors.ModeAnnotation).
func TrimMeta(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Namespace:
		o.ManagedFields = nil
		o.Annotations = nil
		o.Spec = corev1.NamespaceSpec{}
		o.Status = corev1.NamespaceStatus{}
	case *networkingv1.NetworkPolicy:
		o.ManagedFields = nil
		o.Annotations = selectors.ModeAnnotations(o.Annotations)
	}
	return obj, nil
}

var (
	_ toolscache.TransformFunc = newPodTrimmer().Transform
	_ toolscache.TransformFunc = TrimMeta
	_ client.Object            = &cachedPod{}
)
