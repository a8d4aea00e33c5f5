package controllers

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpol/nftpol/selectors"
)

func TestModelInputDiffers(t *testing.T) {
	pod := func(mutate func(p *corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a", ResourceVersion: "1", Labels: map[string]string{"app": "a"}},
			Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}}},
		}
		mutate(p)
		return p
	}
	ns := func(mutate func(n *corev1.Namespace)) *corev1.Namespace {
		n := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"team": "x"}}}
		mutate(n)
		return n
	}
	pol := func(mutate func(p *networkingv1.NetworkPolicy)) *networkingv1.NetworkPolicy {
		p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "p", Generation: 1}}
		mutate(p)
		return p
	}
	same := func(*corev1.Pod) {}
	for _, tt := range []struct {
		name     string
		old, new client.Object
		want     bool
	}{
		{"pod resync", pod(same), pod(same), false},
		{"pod resource version only", pod(same), pod(func(p *corev1.Pod) { p.ResourceVersion = "2" }), false},
		{"pod annotation", pod(same), pod(func(p *corev1.Pod) { p.Annotations = map[string]string{"a": "b"} }), false},
		{"pod condition", pod(same), pod(func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		}), false},
		{"pod pending to running, same addresses", pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }), pod(same), false},
		{"pod label", pod(same), pod(func(p *corev1.Pod) { p.Labels = map[string]string{"app": "b"} }), true},
		{"pod address", pod(same), pod(func(p *corev1.Pod) { p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: "fd00::1"}) }), true},
		{"pod finished", pod(same), pod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }), true},
		{"pod named port", pod(same), pod(func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 81 }), true},
		{"pod scheduled", pod(func(p *corev1.Pod) { p.Spec.NodeName = "" }), pod(same), true},
		{"namespace annotation", ns(func(*corev1.Namespace) {}), ns(func(n *corev1.Namespace) { n.Annotations = map[string]string{"a": "b"} }), false},
		{"namespace label", ns(func(*corev1.Namespace) {}), ns(func(n *corev1.Namespace) { n.Labels["env"] = "prod" }), true},
		{"policy label", pol(func(*networkingv1.NetworkPolicy) {}), pol(func(p *networkingv1.NetworkPolicy) { p.Labels = map[string]string{"a": "b"} }), false},
		{"policy spec", pol(func(*networkingv1.NetworkPolicy) {}), pol(func(p *networkingv1.NetworkPolicy) {
			p.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
		}), true},
		{"policy other annotation", pol(func(*networkingv1.NetworkPolicy) {}), pol(func(p *networkingv1.NetworkPolicy) { p.Annotations = map[string]string{"a": "b"} }), false},
		{"policy put in audit mode", pol(func(*networkingv1.NetworkPolicy) {}), pol(func(p *networkingv1.NetworkPolicy) {
			p.Annotations = map[string]string{selectors.ModeAnnotation: selectors.ModeAudit}
		}), true},
		{"policy audit mode removed", pol(func(p *networkingv1.NetworkPolicy) {
			p.Annotations = map[string]string{selectors.ModeAnnotation: selectors.ModeAudit}
		}), pol(func(*networkingv1.NetworkPolicy) {}), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := modelInputDiffers(tt.old, tt.new); got != tt.want {
				t.Fatalf("modelInputDiffers = %v, want %v", got, tt.want)
			}
			// The agent's predicate sees what the cache keeps: the same
			// pods after the transform must be told apart the same way.
			if _, isPod := tt.old.(*corev1.Pod); isPod {
				tr := newPodTrimmer()
				old, _ := tr.Transform(tt.old)
				new, _ := tr.Transform(tt.new)
				if got := modelInputDiffers(old.(client.Object), new.(client.Object)); got != tt.want {
					t.Fatalf("modelInputDiffers of cached pods = %v, want %v", got, tt.want)
				}
			}
		})
	}
}

// syncCount reads nftpol_syncs_total of an agent.
func (a *agentEnv) syncCount(t *testing.T) float64 {
	t.Helper()
	families, err := a.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "nftpol_syncs_total" {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no nftpol_syncs_total")
	return 0
}

// TestUpdatesTheModelIgnoresCostNoSync writes 40 updates that change
// nothing the model reads (pod conditions and annotations, namespace and
// policy annotations), then one relabel: exactly one sync follows.
func TestUpdatesTheModelIgnoresCostNoSync(t *testing.T) {
	a := startAgentWith(t, "node-a", func(o *Options) { o.VerifyInterval = 0 })
	a.createNamespace(t, "filter-x", map[string]string{"team": "x"})
	pod := a.createPod(t, "filter-x", "server", "node-a", map[string]string{"app": "server"}, "10.2.0.10")
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "filter-x", Name: "deny"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}},
	}
	if err := a.client.Create(a.ctx, pol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "policy in force", wantKeys(a.kernel, "ingress_v4", "10.2.0.10"))
	// Let the creates' events drain: the count must stay put.
	var before float64
	eventually(t, "syncs settle", func() error {
		n := a.syncCount(t)
		time.Sleep(300 * time.Millisecond)
		if m := a.syncCount(t); m != n {
			return fmt.Errorf("syncs still moving: %v then %v", n, m)
		}
		before = n
		return nil
	})

	ns := &corev1.Namespace{}
	for i := 0; i < 10; i++ {
		if err := a.client.Get(a.ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
			t.Fatal(err)
		}
		pod.Annotations = map[string]string{"round": fmt.Sprint(i)}
		if err := a.client.Update(a.ctx, pod); err != nil {
			t.Fatal(err)
		}
		pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: []corev1.ConditionStatus{corev1.ConditionTrue, corev1.ConditionFalse}[i%2]}}
		if err := a.client.Status().Update(a.ctx, pod); err != nil {
			t.Fatal(err)
		}
		if err := a.client.Get(a.ctx, client.ObjectKey{Name: "filter-x"}, ns); err != nil {
			t.Fatal(err)
		}
		ns.Annotations = map[string]string{"round": fmt.Sprint(i)}
		if err := a.client.Update(a.ctx, ns); err != nil {
			t.Fatal(err)
		}
		if err := a.client.Get(a.ctx, client.ObjectKeyFromObject(pol), pol); err != nil {
			t.Fatal(err)
		}
		pol.Annotations = map[string]string{"round": fmt.Sprint(i)}
		if err := a.client.Update(a.ctx, pol); err != nil {
			t.Fatal(err)
		}
	}
	a.relabel(t, pod, map[string]string{"app": "other"})
	eventually(t, "relabel reaches the kernel", wantKeys(a.kernel, "ingress_v4"))
	time.Sleep(500 * time.Millisecond) // room for any late sync to show
	if got := a.syncCount(t) - before; got != 1 {
		t.Fatalf("40 irrelevant updates and one relabel cost %v syncs, want 1", got)
	}
}
