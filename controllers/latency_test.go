package controllers

import (
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// latencyCounts reads the programming-latency histogram's sample counts
// by kind and the oldest-pending gauge from a registry.
func latencyCounts(t *testing.T, reg *prometheus.Registry) (map[string]uint64, float64) {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]uint64{}
	oldest := -1.0
	for _, f := range families {
		switch f.GetName() {
		case programmingLatencyMetric:
			for _, m := range f.GetMetric() {
				counts[labelValue(m, "kind")] = m.GetHistogram().GetSampleCount()
			}
		case oldestPendingMetric:
			oldest = f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return counts, oldest
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// TestProgrammingLatency runs the agent against a real API server and
// kernel, makes a known list of changes and checks that the histogram
// counted exactly those changes, by kind, once each was committed, and
// that the oldest-pending gauge is back at 0.
func TestProgrammingLatency(t *testing.T) {
	a := startAgent(t, "node-1")
	eventually(t, "first sync", func() error {
		if !a.syncer.Synced() {
			return fmt.Errorf("not synced")
		}
		if _, oldest := latencyCounts(t, a.metrics); oldest != 0 {
			return fmt.Errorf("oldest pending change is %vs old", oldest)
		}
		return nil
	})
	before, _ := latencyCounts(t, a.metrics)

	// 1 namespace event, 2 per pod (create, then the status the kubelet
	// writes), 3 policy events (create, spec update, delete).
	a.createNamespace(t, "lat", map[string]string{"team": "lat"})
	a.createPod(t, "lat", "p1", "node-1", map[string]string{"app": "a"}, "10.9.0.1")
	a.createPod(t, "lat", "p2", "node-2", map[string]string{"app": "b"}, "10.9.0.2")
	np := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "lat", Name: "deny"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}},
	}
	if err := a.client.Create(a.ctx, np); err != nil {
		t.Fatal(err)
	}
	np.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{}}
	if err := a.client.Update(a.ctx, np); err != nil {
		t.Fatal(err)
	}
	if err := a.client.Delete(a.ctx, np); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{ChangeNamespace: 1, ChangePod: 4, ChangeNetworkPolicy: 3}
	eventually(t, "every change counted once committed", func() error {
		after, oldest := latencyCounts(t, a.metrics)
		for _, kind := range []string{ChangeNamespace, ChangePod, ChangeNetworkPolicy, ChangeClusterPolicy, ChangeNode} {
			if got := after[kind] - before[kind]; got != want[kind] {
				return fmt.Errorf("%s: %d changes counted, want %d", kind, got, want[kind])
			}
		}
		if oldest != 0 {
			return fmt.Errorf("oldest pending change is %vs old, want 0", oldest)
		}
		return nil
	})
	logLatency(t, a.metrics)
	// Nothing more arrives later: a second look after more syncs (one
	// per second) counts the same.
	time.Sleep(2 * time.Second)
	after, oldest := latencyCounts(t, a.metrics)
	for kind, n := range want {
		if got := after[kind] - before[kind]; got != n {
			t.Errorf("%s: %d changes counted after more syncs, want %d", kind, got, n)
		}
	}
	if oldest != 0 {
		t.Errorf("oldest pending change is %vs old when idle", oldest)
	}
}

// TestLatencyTrackerUnit follows changes through a sync that fails and
// one that commits, with a clock the test moves.
func TestLatencyTrackerUnit(t *testing.T) {
	reg := prometheus.NewRegistry()
	tr, err := newLatencyTracker(reg)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	tr.now = func() time.Time { return now }
	if got := tr.oldestAge(); got != 0 {
		t.Fatalf("idle gauge %v", got)
	}
	tr.received(ChangePod)
	now = now.Add(time.Second)
	tr.received(ChangeNetworkPolicy)
	now = now.Add(time.Second)
	if got := tr.oldestAge(); got != 2 {
		t.Fatalf("oldest age %v, want 2", got)
	}
	tr.take() // a sync starts and fails: nothing committed
	tr.received(ChangeNamespace)
	if got := tr.oldestAge(); got != 2 {
		t.Fatalf("oldest age after a failed sync %v, want 2", got)
	}
	tr.take() // the retry takes all three and commits
	now = now.Add(time.Second)
	tr.committed()
	if got := tr.oldestAge(); got != 0 {
		t.Fatalf("gauge %v after the commit, want 0", got)
	}
	counts, _ := latencyCounts(t, reg)
	for kind, n := range map[string]uint64{ChangePod: 1, ChangeNetworkPolicy: 1, ChangeNamespace: 1} {
		if counts[kind] != n {
			t.Errorf("%s counted %d, want %d", kind, counts[kind], n)
		}
	}
	// The pod change waited 3 s, the policy change 2 s, the namespace 1 s.
	families, _ := reg.Gather()
	for _, f := range families {
		if f.GetName() != programmingLatencyMetric {
			continue
		}
		sums := map[string]float64{}
		for _, m := range f.GetMetric() {
			sums[labelValue(m, "kind")] = m.GetHistogram().GetSampleSum()
		}
		if sums[ChangePod] != 3 || sums[ChangeNetworkPolicy] != 2 || sums[ChangeNamespace] != 1 {
			t.Errorf("latency sums %v, want pod 3, networkpolicy 2, namespace 1", sums)
		}
	}
}

// logLatency prints the histogram's counts and sums, for the figures the
// README quotes.
func logLatency(t *testing.T, reg *prometheus.Registry) {
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != programmingLatencyMetric {
			continue
		}
		for _, m := range f.GetMetric() {
			h := m.GetHistogram()
			t.Logf("%s{kind=%q}: count %d, sum %.4fs, mean %.1fms", f.GetName(), labelValue(m, "kind"),
				h.GetSampleCount(), h.GetSampleSum(), 1000*h.GetSampleSum()/float64(h.GetSampleCount()))
		}
	}
}
