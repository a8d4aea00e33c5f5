package controllers

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpol/nftpol/selectors"
)

// cachedPod is all the agent's cache keeps of a pod: the pod as the
// policy model reads it (labels, node, host networking, phase, addresses,
// named ports) and the resource version the informer tracks. Everything
// else of a pod (most of its bytes: images, env, volumes, managed fields,
// conditions) never reaches the cache, and neither do the empty fields of
// a metav1.ObjectMeta (232 bytes per pod): the name and namespace are the
// model's, the rest of the object metadata reads as empty. The informer
// store holds these, so a sync reads the model's pods without converting
// any.
type cachedPod struct {
	droppedMeta
	resourceVersion string
	// Model is shared with every sync that reads it and never changed:
	// an update of the pod brings a new cachedPod.
	Model *selectors.Pod
}

// GetObjectKind implements runtime.Object; the cache needs no kind.
func (p *cachedPod) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject implements runtime.Object.
func (p *cachedPod) DeepCopyObject() runtime.Object {
	out := &cachedPod{resourceVersion: p.resourceVersion}
	if p.Model != nil {
		m := *p.Model
		m.Labels = maps.Clone(m.Labels)
		m.IPs = slices.Clone(m.IPs)
		m.Ports = slices.Clone(m.Ports)
		out.Model = &m
	}
	return out
}

// The metadata the cache keeps. The setters replace the model rather
// than change it: it is shared.
func (p *cachedPod) GetName() string              { return p.model().Name }
func (p *cachedPod) GetNamespace() string         { return p.model().Namespace }
func (p *cachedPod) GetLabels() map[string]string { return p.model().Labels }
func (p *cachedPod) GetResourceVersion() string   { return p.resourceVersion }
func (p *cachedPod) SetResourceVersion(v string)  { p.resourceVersion = v }
func (p *cachedPod) SetName(name string)          { p.setModel(func(m *selectors.Pod) { m.Name = name }) }
func (p *cachedPod) SetNamespace(ns string)       { p.setModel(func(m *selectors.Pod) { m.Namespace = ns }) }
func (p *cachedPod) SetLabels(labels map[string]string) {
	p.setModel(func(m *selectors.Pod) { m.Labels = labels })
}

func (p *cachedPod) model() *selectors.Pod {
	if p.Model == nil {
		return &selectors.Pod{}
	}
	return p.Model
}

func (p *cachedPod) setModel(change func(*selectors.Pod)) {
	m := *p.model()
	change(&m)
	p.Model = &m
}

// droppedMeta is the object metadata the cache does not keep: it reads as
// empty and ignores what is set (nothing sets it on a cached pod: the
// informer and the event handlers read names, labels and versions only).
type droppedMeta struct{}

func (droppedMeta) GetGenerateName() string                       { return "" }
func (droppedMeta) SetGenerateName(string)                        {}
func (droppedMeta) GetUID() types.UID                             { return "" }
func (droppedMeta) SetUID(types.UID)                              {}
func (droppedMeta) GetGeneration() int64                          { return 0 }
func (droppedMeta) SetGeneration(int64)                           {}
func (droppedMeta) GetSelfLink() string                           { return "" }
func (droppedMeta) SetSelfLink(string)                            {}
func (droppedMeta) GetCreationTimestamp() metav1.Time             { return metav1.Time{} }
func (droppedMeta) SetCreationTimestamp(metav1.Time)              {}
func (droppedMeta) GetDeletionTimestamp() *metav1.Time            { return nil }
func (droppedMeta) SetDeletionTimestamp(*metav1.Time)             {}
func (droppedMeta) GetDeletionGracePeriodSeconds() *int64         { return nil }
func (droppedMeta) SetDeletionGracePeriodSeconds(*int64)          {}
func (droppedMeta) GetAnnotations() map[string]string             { return nil }
func (droppedMeta) SetAnnotations(map[string]string)              {}
func (droppedMeta) GetFinalizers() []string                       { return nil }
func (droppedMeta) SetFinalizers([]string)                        {}
func (droppedMeta) GetOwnerReferences() []metav1.OwnerReference   { return nil }
func (droppedMeta) SetOwnerReferences([]metav1.OwnerReference)    {}
func (droppedMeta) GetManagedFields() []metav1.ManagedFieldsEntry { return nil }
func (droppedMeta) SetManagedFields([]metav1.ManagedFieldsEntry)  {}

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
// cachedPod, and shares what pods repeat among all pods that repeat it:
// one labels map per label set (the pods of one workload carry the same
// labels), one named-port list per port set, one string per namespace
// and node name (the decoder gives every pod its own copies).
type podTrimmer struct {
	mu      sync.Mutex
	labels  interner[map[string]string]
	ports   interner[[]selectors.NamedPort]
	strings interner[string]
}

// maxInterned bounds each interner: past it, it starts over (the values
// already shared stay shared; new pods are interned anew).
const maxInterned = 50_000

func newPodTrimmer() *podTrimmer { return &podTrimmer{} }

// Transform is the cache transform. Tombstones and other types pass
// through untouched.
func (t *podTrimmer) Transform(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	model := selectors.PodFromObject(pod)
	if len(model.Labels) == 0 {
		model.Labels = nil
	}
	labelsKey, portsKey := labelsKey(model.Labels), portsKey(model.Ports)
	t.mu.Lock()
	if model.Labels != nil {
		model.Labels = t.labels.intern(labelsKey, model.Labels)
	}
	if model.Ports != nil {
		model.Ports = t.ports.intern(portsKey, model.Ports)
	}
	model.Namespace = t.strings.intern(model.Namespace, model.Namespace)
	model.NodeName = t.strings.intern(model.NodeName, model.NodeName)
	t.mu.Unlock()
	return &cachedPod{resourceVersion: pod.ResourceVersion, Model: model}, nil
}

// interner hands out one shared value per key.
type interner[V any] struct{ values map[string]V }

func (in *interner[V]) intern(key string, v V) V {
	if shared, ok := in.values[key]; ok {
		return shared
	}
	if in.values == nil || len(in.values) >= maxInterned {
		in.values = map[string]V{}
	}
	in.values[key] = v
	return v
}

// labelsKey is a label set as a string, equal for equal sets whatever the
// order.
func labelsKey(l map[string]string) string {
	keys := slices.Sorted(maps.Keys(l))
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(l[k])
		b.WriteByte(0)
	}
	return b.String()
}

// portsKey is a list of named ports as a string (order kept: the model
// reads the list as it is).
func portsKey(ports []selectors.NamedPort) string {
	var b strings.Builder
	for _, p := range ports {
		fmt.Fprintf(&b, "%s\x00%d\x00%d\x00", p.Name, p.Protocol, p.Port)
	}
	return b.String()
}

// policyTrimmer is the cache transform for NetworkPolicies: TrimMeta, and
// one matchLabels map for every selector of every policy with the same
// labels. Policies repeat a few selectors (an app, a tier, a team's
// namespaces), and a map is the largest part of a small policy: 2.2 KB of
// heap per policy at 10k policies before (BenchmarkAgentMemory).
type policyTrimmer struct {
	mu        sync.Mutex
	selectors interner[map[string]string]
}

func newPolicyTrimmer() *policyTrimmer { return &policyTrimmer{} }

// Transform is the cache transform; other types get TrimMeta.
func (t *policyTrimmer) Transform(obj any) (any, error) {
	np, ok := obj.(*networkingv1.NetworkPolicy)
	if !ok {
		return TrimMeta(obj)
	}
	if _, err := TrimMeta(np); err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	share := func(s *metav1.LabelSelector) {
		if s != nil && len(s.MatchLabels) > 0 {
			s.MatchLabels = t.selectors.intern(labelsKey(s.MatchLabels), s.MatchLabels)
		}
	}
	share(&np.Spec.PodSelector)
	for i := range np.Spec.Ingress {
		for j := range np.Spec.Ingress[i].From {
			share(np.Spec.Ingress[i].From[j].PodSelector)
			share(np.Spec.Ingress[i].From[j].NamespaceSelector)
		}
	}
	for i := range np.Spec.Egress {
		for j := range np.Spec.Egress[i].To {
			share(np.Spec.Egress[i].To[j].PodSelector)
			share(np.Spec.Egress[i].To[j].NamespaceSelector)
		}
	}
	return np, nil
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
	_ toolscache.TransformFunc = newPolicyTrimmer().Transform
	_ client.Object            = &cachedPod{}
)
