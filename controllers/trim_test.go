package controllers

import (
	"reflect"
	"strings"
	"testing"
	"unsafe"

	corev1 "k8s.io/api/core/v1"
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
