package controllers

import (
	"sort"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"
)

// TrimPod is the cache transform for pods: it keeps only what the policy
// model reads (identity, labels, node, host networking, named ports, phase
// and addresses). Everything else of a pod (most of its bytes: images,
// env, volumes, managed fields, conditions) never reaches the cache, so the
// agent's memory grows with the number of pods, not with their size.
func TrimPod(obj any) (any, error) { return trimPod(obj, nil) }

// podTrimmer is TrimPod that also shares one labels map among all pods
// with equal labels: the pods of one workload carry the same labels, and
// their maps are a third of a trimmed pod's memory.
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

// Transform is the cache transform.
func (t *podTrimmer) Transform(obj any) (any, error) { return trimPod(obj, t.intern) }

func (t *podTrimmer) intern(l map[string]string) map[string]string {
	if len(l) == 0 {
		return l
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

func trimPod(obj any, intern func(map[string]string) map[string]string) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		// Tombstones and other types pass through untouched.
		return obj, nil
	}
	trimmed := &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              pod.Name,
			Namespace:         pod.Namespace,
			UID:               pod.UID,
			ResourceVersion:   pod.ResourceVersion,
			Labels:            labelsOf(pod, intern),
			DeletionTimestamp: pod.DeletionTimestamp,
		},
		Spec: corev1.PodSpec{
			NodeName:       pod.Spec.NodeName,
			HostNetwork:    pod.Spec.HostNetwork,
			Containers:     namedPortsOnly(pod.Spec.Containers, false),
			InitContainers: namedPortsOnly(pod.Spec.InitContainers, true),
		},
		Status: corev1.PodStatus{
			Phase:  pod.Status.Phase,
			PodIP:  pod.Status.PodIP,
			PodIPs: pod.Status.PodIPs,
		},
	}
	return trimmed, nil
}

func labelsOf(pod *corev1.Pod, intern func(map[string]string) map[string]string) map[string]string {
	if intern == nil {
		return pod.Labels
	}
	return intern(pod.Labels)
}

// namedPortsOnly keeps, per container, only the ports that have a name: only
// those can be referenced by a policy. Init containers count only when they
// are sidecars (restartPolicy Always), since the others have exited by the
// time the pod serves traffic.
func namedPortsOnly(containers []corev1.Container, sidecarsOnly bool) []corev1.Container {
	var out []corev1.Container
	for i := range containers {
		c := &containers[i]
		if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
			continue
		}
		var ports []corev1.ContainerPort
		for _, p := range c.Ports {
			if p.Name != "" {
				ports = append(ports, corev1.ContainerPort{Name: p.Name, ContainerPort: p.ContainerPort, Protocol: p.Protocol})
			}
		}
		if len(ports) == 0 {
			continue
		}
		out = append(out, corev1.Container{Name: c.Name, Ports: ports, RestartPolicy: c.RestartPolicy})
	}
	return out
}

// TrimMeta drops the parts of namespaces and policies the agent never reads:
// managed fields and annotations (kubectl's last-applied copy doubles the
// size of every applied object).
func TrimMeta(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Namespace:
		o.ManagedFields = nil
		o.Annotations = nil
		o.Spec = corev1.NamespaceSpec{}
		o.Status = corev1.NamespaceStatus{}
	case *networkingv1.NetworkPolicy:
		o.ManagedFields = nil
		o.Annotations = nil
	}
	return obj, nil
}

var (
	_ toolscache.TransformFunc = TrimPod
	_ toolscache.TransformFunc = TrimMeta
)
