package main

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors/reference"
)

func explainPod(name string, created time.Time, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "e", Name: name, Labels: map[string]string{"app": name}, CreationTimestamp: metav1.NewTime(created)},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	return p
}

// TestExplainEnds: explain without an API server, on objects as the API
// server would list them. A default deny on every pod of "e" makes any
// connection that leaves its pod DENIED, so ALLOWED can only come from the
// self rule.
func TestExplainEnds(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cl := &reference.Cluster{
		Pods: []*corev1.Pod{
			explainPod("dual", t0, "10.9.0.1", "fd00::1"),
			explainPod("dual2", t0, "10.9.0.2", "fd00::2"),
			explainPod("v4", t0, "10.9.0.3"),
			explainPod("v6", t0, "fd00::4"),
			explainPod("pending", t0),
			// A stale object claiming dual2's IPv4 address, older: dual2 owns it.
			explainPod("stale", t0.Add(-time.Hour), "10.9.0.2"),
		},
		Policies: []*networkingv1.NetworkPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "e", Name: "deny"},
			Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}},
		}},
	}
	tests := []struct {
		name     string
		from, to string
		family   int
		want     []string // substrings of the output
		wantErr  string
	}{
		{name: "pod to itself", from: "e/dual", to: "e/dual", want: []string{"10.9.0.1 -> 10.9.0.1 TCP/80: ALLOWED", "never leaves e/dual"}},
		{name: "pod to itself over IPv6", from: "e/dual", to: "e/dual", family: 6, want: []string{"fd00::1 -> fd00::1 TCP/80: ALLOWED", "never leaves"}},
		{name: "pod to its own address", from: "e/v6", to: "fd00::4", want: []string{"ALLOWED", "never leaves e/v6"}},
		{name: "dual to dual prefers IPv4", from: "e/dual", to: "e/dual2", want: []string{"10.9.0.1 -> 10.9.0.2", "DENIED"}},
		{name: "dual to dual, IPv6 asked", from: "e/dual", to: "e/dual2", family: 6, want: []string{"fd00::1 -> fd00::2", "DENIED"}},
		{name: "dual to IPv6-only uses IPv6", from: "e/dual", to: "e/v6", want: []string{"over IPv6, the only family both", "fd00::1 -> fd00::4", "DENIED"}},
		{name: "IPv6-only to dual uses IPv6", from: "e/v6", to: "e/dual", want: []string{"over IPv6", "fd00::4 -> fd00::1"}},
		{name: "IPv4-only to dual uses IPv4", from: "e/v4", to: "e/dual", want: []string{"over IPv4, the only family both", "10.9.0.3 -> 10.9.0.1"}},
		{name: "no common family", from: "e/v4", to: "e/v6", wantErr: "share no IP family"},
		{name: "family the source lacks", from: "e/v4", to: "e/dual", family: 6, wantErr: "e/v4 has no IPv6 address"},
		{name: "address of the other family", from: "e/v4", to: "fd00::9", wantErr: "e/v4 has no IPv6 address"},
		{name: "address against --family", from: "e/dual", to: "fd00::9", family: 4, wantErr: "not of --family 4"},
		{name: "outside address", from: "e/dual", to: "192.0.2.9", want: []string{"10.9.0.1 -> 192.0.2.9", "the destination is not a pod"}},
		{name: "stale object is named", from: "e/dual", to: "e/stale", want: []string{"10.9.0.2 is also claimed by e/dual2", "isolated by e/deny"}},
		{name: "pod without address", from: "e/pending", to: "e/dual", wantErr: "has no address policies apply to"},
		{name: "unknown pod", from: "e/nope", to: "e/dual", wantErr: "no pod e/nope"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := explain(cl, tt.from, tt.to, tt.family, 80, corev1.ProtocolTCP)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q (output %q)", err, tt.wantErr, out)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestExplainAudit: explain names each policy in audit mode that would
// deny an allowed connection, on the side it would deny it, and names
// none when the connection is already denied or the policy would allow it.
func TestExplainAudit(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	audit := map[string]string{"nftpol.io/mode": "audit"}
	app := func(name string) metav1.LabelSelector {
		return metav1.LabelSelector{MatchLabels: map[string]string{"app": name}}
	}
	denyAll := func(name, pod string, audited bool, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
		np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "e", Name: name},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: app(pod), PolicyTypes: types}}
		if audited {
			np.Annotations = audit
		}
		return np
	}
	// audit-allow-a isolates b for ingress too, but allows a: it would deny
	// nothing of a -> b.
	allowA := denyAll("audit-allow-a", "b", true, networkingv1.PolicyTypeIngress)
	allowA.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}}}}}}
	all := metav1.LabelSelector{}
	cnpDeny := &policyv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "audit-cnp", Annotations: audit},
		Spec: policyv1beta1.ClusterNetworkPolicySpec{Tier: policyv1beta1.AdminTier, Priority: 5,
			Subject: policyv1beta1.ClusterNetworkPolicySubject{Pods: &policyv1beta1.NamespacedPod{NamespaceSelector: all, PodSelector: app("c")}},
			Egress: []policyv1beta1.ClusterNetworkPolicyEgressRule{{Name: "no-egress", Action: policyv1beta1.ClusterNetworkPolicyRuleActionDeny,
				To: []policyv1beta1.ClusterNetworkPolicyEgressPeer{{Namespaces: &all}}}}}}
	cl := &reference.Cluster{
		Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "e"}}},
		Pods: []*corev1.Pod{
			explainPod("a", t0, "10.9.0.1"), explainPod("b", t0, "10.9.0.2"),
			explainPod("c", t0, "10.9.0.3"), explainPod("d", t0, "10.9.0.4"),
		},
		Policies: []*networkingv1.NetworkPolicy{
			denyAll("audit-np", "b", true, networkingv1.PolicyTypeIngress),
			denyAll("audit-egress", "a", true, networkingv1.PolicyTypeEgress),
			allowA,
			denyAll("deny-d", "d", false, networkingv1.PolicyTypeIngress),
			denyAll("audit-d", "d", true, networkingv1.PolicyTypeIngress),
		},
		ClusterPolicies: []*policyv1beta1.ClusterNetworkPolicy{cnpDeny},
	}
	tests := []struct {
		name     string
		from, to string
		want     []string // substrings of the output
		notWant  []string
	}{
		{name: "audit NP on a non-isolated pod, both sides", from: "e/a", to: "e/b", want: []string{
			"TCP/80: ALLOWED",
			"ingress: allowed (no policy isolates e/b for ingress)",
			"ingress: allowed; would be denied by e/audit-np (audit mode): e/b would be isolated by e/audit-np and no rule matches",
			"egress: allowed; would be denied by e/audit-egress (audit mode): e/a would be isolated by e/audit-egress and no rule matches",
		}, notWant: []string{"e/audit-allow-a (audit mode)"}},
		{name: "audit ClusterNetworkPolicy", from: "e/c", to: "e/a", want: []string{
			"TCP/80: ALLOWED",
			"egress: allowed; would be denied by audit-cnp (audit mode): denied for e/c by ",
		}, notWant: []string{"ingress: allowed; would"}},
		{name: "already denied: no would-deny", from: "e/a", to: "e/d", want: []string{"DENIED", "isolated by e/deny-d"}, notWant: []string{"would be denied"}},
		{name: "no audit policy on either end", from: "e/d", to: "e/c", want: []string{"ALLOWED"}, notWant: []string{"would be denied"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, err := explain(cl, tt.from, tt.to, 0, 80, corev1.ProtocolTCP)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("\n%s", out)
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
		})
	}
}
