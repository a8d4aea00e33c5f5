package controllers

import (
	"reflect"
	"testing"

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
	if cached.Namespace != "x" || cached.Name != "a" || cached.UID != "u1" || cached.ResourceVersion != "7" || cached.Annotations != nil {
		t.Fatalf("the cache keys the pod by %+v", cached.ObjectMeta)
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
