package test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/test/testbed"
)

// TestChurn runs a burst of 1,000 pod creates, relabels and deletes (API
// objects on both nodes) and 150 policy changes while probes run, then
// restores the policies of one conformance case: the final matrices are
// exact, no sync failed, the agents' goroutines return to their level and
// their memory is measured.
func TestChurn(t *testing.T) {
	m := startModel(t, e2ePrefix+"churn", "--deny-action", "reject")
	ctx := context.Background()
	cs := m.cp.Clientset
	before := map[string]runtimeFigures{}
	for name, a := range m.agents {
		before[name] = settledRuntimeFigures(t, a)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var probes int
	go func() {
		defer wg.Done()
		_, probes = probeLoop(m.bed.Pod("y/b"), m.bed.Pod("x/a"), 20*time.Millisecond, 2000, stop)
	}()

	start := time.Now()
	policyWrites := 0
	const churnPods = 250 // x4 operations: create, relabel, status, delete
	for i := 0; i < churnPods; i++ {
		node := m.bed.Nodes[i%2].Name
		name := fmt.Sprintf("churn-%03d", i)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: name, Labels: map[string]string{"pod": "b"}},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "none"}}},
		}
		created, err := cs.CoreV1().Pods("y").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: fmt.Sprintf("10.250.%d.%d", i/250, i%250+1),
			PodIPs: []corev1.PodIP{{IP: fmt.Sprintf("10.250.%d.%d", i/250, i%250+1)}, {IP: fmt.Sprintf("fd00:250::%x", i+1)}}}
		if created, err = cs.CoreV1().Pods("y").UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		created.Labels = map[string]string{"pod": "c"}
		if _, err := cs.CoreV1().Pods("y").Update(ctx, created, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 { // 125 policy writes and 25 deletes
			policyWrites++
			p := withIngress(policy("x", fmt.Sprintf("churn-%d", i%30), sel("pod", []string{"a", "b", "c"}[i%3]), nil),
				from(nsPodPeer(selPtr("ns", "y"), selPtr("pod", []string{"b", "c"}[i/2%2]))))
			m.applyPolicy(t, p)
			if i%10 == 0 {
				policyWrites++
				if err := cs.NetworkingV1().NetworkPolicies("x").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	zero := int64(0)
	for i := 0; i < churnPods; i++ {
		if err := cs.CoreV1().Pods("y").Delete(ctx, fmt.Sprintf("churn-%03d", i), metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
			t.Fatal(err)
		}
	}
	churnTime := time.Since(start)
	close(stop)
	wg.Wait()

	// Back to one known case.
	m.reset(t)
	m.applyPolicy(t, withIngress(policy("x", "allow-from-y", all, nil), from(nsPeer(selPtr("ns", "y")))))
	observed, failures := m.converge(step{expect: func(e *expectation) { e.isolateIngress("x/*", "y/*") }})
	if len(failures) > 0 {
		t.Fatalf("after the churn the matrices are wrong:\n%s", strings.Join(failures, "\n"))
	}
	m.checkEvaluator(t, observed)
	for name, a := range m.agents {
		if strings.Contains(a.Log(), "Reconciler error") {
			t.Errorf("agent of %s logged failed syncs:\n%s", name, a.Log())
		}
		// Goroutines that a churn leaks stay; the few that come and go
		// (HTTP connections of the scrape and the probes) are bounded.
		var after runtimeFigures
		for attempt := 0; attempt < 20; attempt++ {
			after = readRuntimeFigures(t, a)
			if after.goroutines <= before[name].goroutines+goroutineSlack {
				break
			}
			time.Sleep(250 * time.Millisecond)
		}
		t.Logf("%s: goroutines %d before, %d after; RSS %.1f MiB before, %.1f MiB after; Go heap in use %.1f MiB before, %.1f MiB after",
			name, before[name].goroutines, after.goroutines, before[name].rss/(1<<20), after.rss/(1<<20), before[name].heap/(1<<20), after.heap/(1<<20))
		if after.goroutines > before[name].goroutines+goroutineSlack {
			t.Errorf("agent of %s: %d goroutines after the churn, %d before", name, after.goroutines, before[name].goroutines)
		}
	}
	t.Logf("%d pod writes and %d policy writes in %s while %d probes ran", churnPods*4, policyWrites, churnTime.Round(time.Millisecond), probes)
}

// settledRuntimeFigures reads an agent's figures once the agent stopped
// starting things: ready comes with the first commit, and the
// ClusterNetworkPolicy watch (its informers, some goroutines each) starts
// when discovery finds the API, which may be later. Bounded: at most 40
// readings, 250 ms apart.
func settledRuntimeFigures(t *testing.T, a *testbed.Agent) runtimeFigures {
	t.Helper()
	last := readRuntimeFigures(t, a)
	for attempt := 0; attempt < 40; attempt++ {
		time.Sleep(250 * time.Millisecond)
		now := readRuntimeFigures(t, a)
		if strings.Contains(a.Log(), "ClusterNetworkPolicy API found") && now.goroutines == last.goroutines {
			return now
		}
		last = now
	}
	return last
}

// goroutineSlack is how many more goroutines than before a churn may leave
// behind at most: connections of the metrics server and client-go's.
const goroutineSlack = 10

// runtimeFigures are an agent's Go runtime and process figures, read from
// its /metrics.
type runtimeFigures struct {
	goroutines int
	rss, heap  float64
}

func readRuntimeFigures(t *testing.T, a *testbed.Agent) runtimeFigures {
	t.Helper()
	samples := scrape(t, "http://"+a.MetricsAddr+"/metrics")
	g, ok := samples["go_goroutines"]
	if !ok {
		t.Fatalf("agent of %s exports no go_goroutines", a.Node.Name)
	}
	return runtimeFigures{goroutines: int(g), rss: samples["process_resident_memory_bytes"], heap: samples["go_memstats_heap_inuse_bytes"]}
}
