package main

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

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
