package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpol/nftpol/selectors"
)

func TestEventName(t *testing.T) {
	long := strings.Repeat("a", 250) + "-b"
	tests := []struct {
		name, policy, reason string
	}{
		{"short", "web", "named port tcp/http is defined by none of the pods it applies to"},
		{"longest policy name", long, "r"},
		{"cut before a dash", strings.Repeat("a", 235) + "-" + strings.Repeat("b", 17), "r"},
	}
	seen := map[string]bool{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := eventName(tt.policy, "uid-1", tt.reason)
			if errs := validation.IsDNS1123Subdomain(got); len(errs) > 0 {
				t.Fatalf("eventName = %q: %v", got, errs)
			}
			if again := eventName(tt.policy, "uid-1", tt.reason); again != got {
				t.Fatalf("not deterministic: %q then %q", got, again)
			}
			if seen[got] {
				t.Fatalf("name %q not distinct", got)
			}
			seen[got] = true
		})
	}
	if eventName("web", "uid-1", "a") == eventName("web", "uid-1", "b") {
		t.Error("two problems of one policy share a name")
	}
	if eventName("web", "uid-1", "a") == eventName("web", "uid-2", "a") {
		t.Error("a policy created again (new UID) reuses the old Event's name")
	}
}

// TestOneEventPerPolicyAndProblemAcrossNodes runs the problem reporters of
// two nodes against a real API server. Both see the same problem: exactly
// one Event exists for the policy and reason, and its note names no node.
// When the problem comes back on a node, the Event's series counts it,
// at most once per refresh interval.
func TestOneEventPerPolicyAndProblemAcrossNodes(t *testing.T) {
	cfg := startControlPlane(t)
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "ev"}}); err != nil {
		t.Fatal(err)
	}
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "ev", Name: "bad-port"}}
	if err := c.Create(ctx, pol); err != nil {
		t.Fatal(err)
	}

	clock := &fakeClock{now: time.Now()}
	nodes := []string{"node-a", "node-b"}
	reporters := map[string]*ProblemReporter{}
	for _, node := range nodes {
		r := &ProblemReporter{Reader: c, Events: c, Log: logr.Discard().WithValues("node", node), Now: clock.Now}
		reporters[node] = r
		done := make(chan struct{})
		go func() { defer close(done); _ = r.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
	}
	problem := selectors.Problem{Policy: "ev/bad-port", Reason: "named port tcp/http is defined by none of the pods it applies to"}
	other := selectors.Problem{Policy: "ev/bad-port", Reason: "ipBlock except 10.0.0.0/8 is outside its CIDR 192.168.0.0/16"}

	events := func() []eventsv1.Event {
		t.Helper()
		var list eventsv1.EventList
		if err := c.List(ctx, &list, client.InNamespace("ev")); err != nil {
			t.Fatal(err)
		}
		return list.Items
	}
	// settle waits until both reporters wrote (or found) their Events.
	settle := func(want ...selectors.Problem) {
		t.Helper()
		eventually(t, "both reporters done", func() error {
			for node, r := range reporters {
				r.mu.Lock()
				for _, p := range want {
					if !r.evented[p] {
						r.mu.Unlock()
						return fmt.Errorf("%s has not written the Event of %q", node, p.Reason)
					}
				}
				r.mu.Unlock()
			}
			return nil
		})
	}

	for _, node := range nodes {
		reporters[node].Report(ctx, []selectors.Problem{problem})
	}
	settle(problem)
	got := events()
	if len(got) != 1 {
		t.Fatalf("%d Events for one policy and problem seen on two nodes, want 1: %+v", len(got), got)
	}
	ev := got[0]
	if ev.Reason != EventReason || ev.Regarding.Name != "bad-port" || ev.Regarding.Kind != "NetworkPolicy" || ev.Type != corev1.EventTypeWarning {
		t.Errorf("Event = reason %q regarding %+v type %q", ev.Reason, ev.Regarding, ev.Type)
	}
	if !strings.Contains(ev.Note, problem.Reason) {
		t.Errorf("note %q lacks the reason", ev.Note)
	}
	for _, node := range nodes {
		if strings.Contains(ev.Note, node) || strings.Contains(ev.ReportingInstance, node) {
			t.Errorf("Event names node %s: note %q, instance %q", node, ev.Note, ev.ReportingInstance)
		}
	}
	if ev.Series != nil {
		t.Errorf("series after the first report: %+v", ev.Series)
	}

	// A second problem of the same policy is a second Event; the first
	// one, still reported, is not written again.
	for _, node := range nodes {
		reporters[node].Report(ctx, []selectors.Problem{problem, other})
	}
	settle(problem, other)
	if got := events(); len(got) != 2 {
		t.Fatalf("%d Events for two problems, want 2", len(got))
	}

	// The problem goes away and comes back on node-a within the refresh
	// interval: the Event is left alone. After it, node-b seeing it again
	// counts it once in the series; node-a right after does not.
	reporters["node-a"].Report(ctx, nil)
	reporters["node-a"].Report(ctx, []selectors.Problem{problem})
	settle(problem)
	clock.Advance(seriesRefresh + time.Minute)
	reporters["node-b"].Report(ctx, nil)
	reporters["node-b"].Report(ctx, []selectors.Problem{problem})
	settle(problem)
	reporters["node-a"].Report(ctx, nil)
	reporters["node-a"].Report(ctx, []selectors.Problem{problem})
	settle(problem)
	var count int32
	for _, e := range events() {
		if e.Note == ev.Note {
			if e.Series != nil {
				count = e.Series.Count
			}
		}
	}
	if count != 2 {
		t.Errorf("series count = %d, want 2 (one refresh, counted once)", count)
	}
	if got := events(); len(got) != 2 {
		t.Errorf("%d Events after the problem came back, want 2", len(got))
	}
}
