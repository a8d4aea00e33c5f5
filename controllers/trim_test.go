package controllers

import (
	"reflect"
	"strings"
	"testing"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/nftpol/nftpol/selectors"
)

func TestTrimPodKeepsWhatTheModelReads(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a", UID: "u1", ResourceVersion: "7",
			Labels: map[string]string{"app": "a"}, Annotations: map[string]string{"big": "value"}},
		Spec: corev1.PodSpec{NodeName: "n1", HostNetwork: false,
			Containers: []corev1.Container{{Name: "c", Image: "img", Env: []corev1.EnvVar{{Name: "E", Value: "v"}},
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}, {ContainerPort: 9000}}}},
			InitContainers: []corev1.Container{
				{Name: "setup", Ports: []corev1.ContainerPort{{Name: "init", ContainerPort: 81}}},
				{Name: "sidecar", RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 15001}}},
			}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady}}},
	}
	out, err := newPodTrimmer().Transform(pod)
	if err != nil {
		t.Fatal(err)
	}
	cached := out.(*cachedPod)
	if got, want := cached.Model, selectors.PodFromObject(pod); !reflect.DeepEqual(got, want) {
		t.Fatalf("the cache keeps %+v of the pod, the model reads %+v", got, want)
	}
	if cached.GetNamespace() != "x" || cached.GetName() != "a" || cached.GetResourceVersion() != "7" || cached.GetLabels()["app"] != "a" {
		t.Fatalf("the cache keys the pod by %s/%s version %s", cached.GetNamespace(), cached.GetName(), cached.GetResourceVersion())
	}
	if key, err := toolscache.MetaNamespaceKeyFunc(cached); err != nil || key != "x/a" {
		t.Fatalf("the informer keys the pod as %q (%v)", key, err)
	}
	if cached.GetUID() != "" || cached.GetAnnotations() != nil {
		t.Fatal("the cache keeps metadata the agent never reads")
	}
	// The setters do not change the model, which other syncs share.
	shared := cached.Model
	renamed := cached.DeepCopyObject().(*cachedPod)
	renamed.Model = shared
	renamed.SetName("b")
	if shared.Name != "a" || renamed.GetName() != "b" {
		t.Fatal("SetName changed the shared model")
	}
	// A copy shares nothing the caller could change.
	cp := cached.DeepCopyObject().(*cachedPod)
	cp.Model.Labels["app"] = "changed"
	cp.Model.IPs[0] = cp.Model.IPs[1]
	if cached.Model.Labels["app"] != "a" || cached.Model.IPs[0] == cached.Model.IPs[1] {
		t.Fatal("DeepCopyObject shares the model's labels or addresses")
	}
	// Tombstones and other types pass through.
	tomb := toolscache.DeletedFinalStateUnknown{Key: "x/a", Obj: cached}
	if out, _ := newPodTrimmer().Transform(tomb); out != tomb {
		t.Fatalf("a tombstone became %v", out)
	}
}

func TestPodTrimmerSharesEqualLabels(t *testing.T) {
	tr := newPodTrimmer()
	trim := func(labels map[string]string) map[string]string {
		out, err := tr.Transform(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: labels}})
		if err != nil {
			t.Fatal(err)
		}
		return out.(*cachedPod).Model.Labels
	}
	same := func(a, b map[string]string) bool { return reflect.ValueOf(a).Pointer() == reflect.ValueOf(b).Pointer() }
	a := trim(map[string]string{"app": "web", "tier": "front"})
	b := trim(map[string]string{"tier": "front", "app": "web"})
	c := trim(map[string]string{"app": "web", "tier": "back"})
	// A value that would collide if keys and values were joined naively.
	d := trim(map[string]string{"app": "web\x00tier"})
	if !same(a, b) {
		t.Fatal("equal labels are not shared")
	}
	if same(a, c) || same(a, d) || !reflect.DeepEqual(c, map[string]string{"app": "web", "tier": "back"}) {
		t.Fatal("different labels are shared")
	}
	if got := trim(nil); got != nil {
		t.Fatalf("no labels became %v", got)
	}
	if got := trim(map[string]string{}); got != nil {
		t.Fatalf("empty labels became %v", got)
	}
}

// TestPodTrimmerSharesRepeatedParts: pods of one workload share their
// named ports, and every pod of a namespace or node the same string.
func TestPodTrimmerSharesRepeatedParts(t *testing.T) {
	tr := newPodTrimmer()
	trim := func(ns, node string, ports ...corev1.ContainerPort) *selectors.Pod {
		// Fresh strings, as the decoder hands them over.
		out, err := tr.Transform(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: strings.Clone(ns), Name: "p"},
			Spec: corev1.PodSpec{NodeName: strings.Clone(node), Containers: []corev1.Container{{Ports: ports}}}})
		if err != nil {
			t.Fatal(err)
		}
		return out.(*cachedPod).Model
	}
	http := corev1.ContainerPort{Name: "http", ContainerPort: 80}
	dns := corev1.ContainerPort{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}
	a := trim("prod", "n1", http, dns)
	b := trim("prod", "n1", http, dns)
	c := trim("prod", "n2", dns, http)
	d := trim("dev", "n1", corev1.ContainerPort{Name: "http", ContainerPort: 81})
	if unsafe.SliceData(a.Ports) != unsafe.SliceData(b.Ports) {
		t.Error("equal named ports are not shared")
	}
	if unsafe.SliceData(a.Ports) == unsafe.SliceData(c.Ports) || unsafe.SliceData(a.Ports) == unsafe.SliceData(d.Ports) {
		t.Error("different named ports (or the same in another order) are shared")
	}
	if !reflect.DeepEqual(c.Ports, selectors.PodFromObject(&corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Ports: []corev1.ContainerPort{dns, http}}}}}).Ports) {
		t.Errorf("ports became %v", c.Ports)
	}
	if unsafe.StringData(a.Namespace) != unsafe.StringData(b.Namespace) || unsafe.StringData(a.NodeName) != unsafe.StringData(d.NodeName) {
		t.Error("namespace or node names are not shared")
	}
	if a.Namespace != "prod" || c.NodeName != "n2" || d.Namespace != "dev" {
		t.Errorf("names became %s/%s, %s, %s", a.Namespace, a.NodeName, c.NodeName, d.Namespace)
	}
}

// TestPolicyTrimmerSharesSelectors: equal matchLabels of all policies'
// selectors become one map; the policy reads the same.
func TestPolicyTrimmerSharesSelectors(t *testing.T) {
	tr := newPolicyTrimmer()
	policy := func(name string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: name, Annotations: map[string]string{"a": "b"}},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"tier": "api"}},
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "a"}}}}}},
				Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{
					PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}}}},
			},
		}
	}
	trim := func(np *networkingv1.NetworkPolicy) *networkingv1.NetworkPolicy {
		out, err := tr.Transform(np)
		if err != nil {
			t.Fatal(err)
		}
		return out.(*networkingv1.NetworkPolicy)
	}
	want := policy("a").Spec
	a, b := trim(policy("a")), trim(policy("b"))
	if !reflect.DeepEqual(a.Spec, want) || a.Annotations != nil {
		t.Fatalf("the policy became %+v", a)
	}
	same := func(x, y map[string]string) bool { return reflect.ValueOf(x).Pointer() == reflect.ValueOf(y).Pointer() }
	if !same(a.Spec.PodSelector.MatchLabels, b.Spec.PodSelector.MatchLabels) ||
		!same(a.Spec.PodSelector.MatchLabels, b.Spec.Egress[0].To[0].PodSelector.MatchLabels) ||
		!same(a.Spec.Ingress[0].From[0].NamespaceSelector.MatchLabels, b.Spec.Ingress[0].From[0].NamespaceSelector.MatchLabels) {
		t.Error("equal selectors are not shared")
	}
	if same(a.Spec.PodSelector.MatchLabels, a.Spec.Ingress[0].From[0].PodSelector.MatchLabels) {
		t.Error("different selectors are shared")
	}
	// Other types are trimmed as before.
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", Annotations: map[string]string{"a": "b"}}}
	if out, _ := tr.Transform(ns); out.(*corev1.Namespace).Annotations != nil {
		t.Error("a namespace keeps its annotations")
	}
}

// TestTrimMetaKeepsTheModeAnnotation: the cache drops a policy's
// annotations but its audit mode, which the model reads.
func TestTrimMetaKeepsTheModeAnnotation(t *testing.T) {
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "p",
		Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}", selectors.ModeAnnotation: selectors.ModeAudit}}}
	if _, err := TrimMeta(np); err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{selectors.ModeAnnotation: selectors.ModeAudit}; !reflect.DeepEqual(np.Annotations, want) {
		t.Errorf("annotations after trimming: %v, want %v", np.Annotations, want)
	}
	plain := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{"a": "b"}}}
	if _, err := TrimMeta(plain); err != nil || plain.Annotations != nil {
		t.Errorf("annotations of a policy without a mode after trimming: %v (%v), want none", plain.Annotations, err)
	}
}
