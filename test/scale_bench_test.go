package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
	"github.com/nftpol/nftpol/test/testbed"
)

// BenchmarkScale measures the agent black-box, at cluster scale: a real
// API server holding pods/50 namespaces, the pods and the policies of
// selectorstest.ScaleCluster (API objects; 110 on the agent's node), plus
// two real pods in network namespaces on two nodes. With one agent on the
// server's node it measures:
//   - the agent's memory once its cache is warm (RSS, Go heap);
//   - policy-to-enforcement latency: from the API write of a policy that
//     isolates the server to the first probe the kernel refuses, and from
//     its deletion to the first probe that connects again (25 each);
//     at the end again with 100 ClusterNetworkPolicies over the cluster
//     (cnps-np-*), and the same for a ClusterNetworkPolicy (cnp-*);
//   - one pod change (a remote pod joining peer sets, relabeled out of
//     them, deleted): the sync's duration and the elements it changed, from
//     the agent's own metrics.
//   - at the end, restarts of the agent (scale_restart_test.go): start to
//     ready and its parts, as shipped, without gzip and with paginated
//     lists.
//
// Run it with `make bench` or
//
//	go test -run '^$' -bench Scale -benchtime 1x -timeout 60m ./test/
//
// NFTPOL_SCALE_SIZES=10000 (or 100000) runs one size only (default both).
func BenchmarkScale(b *testing.B) {
	sizes := []struct{ pods, policies int }{{10_000, 1_000}, {100_000, 10_000}}
	if env := os.Getenv("NFTPOL_SCALE_SIZES"); env == "10000" {
		sizes = sizes[:1]
	} else if env == "100000" {
		sizes = sizes[1:]
	}
	for _, size := range sizes {
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size.pods, size.policies), func(b *testing.B) {
			for b.Loop() {
				runScale(b, size.pods, size.policies)
			}
		})
	}
}

func runScale(b *testing.B, nPods, nPolicies int) {
	ctx := context.Background()
	cp := testbed.StartControlPlaneT(b)
	bed := testbed.NewT(b, cp, testbed.Options{Prefix: e2ePrefix + "scale", Nodes: 2})
	local := bed.Nodes[0].Name

	// A clientset of its own without client-side throttling: the writes
	// are the setup, not what is measured.
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = 5000, 10000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	state := selectorstest.ScaleCluster(nPods, nPolicies, 110)
	if err := writeCluster(ctx, cs, state, local); err != nil {
		b.Fatal(err)
	}
	b.Logf("wrote %d pods, %d namespaces, %d policies in %s", len(state.Pods), len(state.Namespaces), len(state.Policies), time.Since(start).Round(time.Second))

	if err := bed.EnsureNamespace(ctx, "lat", map[string]string{"ns": "lat"}); err != nil {
		b.Fatal(err)
	}
	server, err := bed.AddPod(ctx, testbed.PodSpec{Namespace: "lat", Name: "server", Node: local, Labels: map[string]string{"app": "lat-server"}})
	if err != nil {
		b.Fatal(err)
	}
	client, err := bed.AddPod(ctx, testbed.PodSpec{Namespace: "lat", Name: "client", Node: bed.Nodes[1].Name, Labels: map[string]string{"app": "lat-client"}})
	if err != nil {
		b.Fatal(err)
	}

	// Built (or found) before the clock starts: start to ready is the
	// agent's, not the compiler's.
	if _, err := testbed.AgentBinary(); err != nil {
		b.Fatal(err)
	}
	// NFTPOL_SCALE_PROFILE=file saves a 10 s CPU profile of the agent's
	// start (file.start), a heap profile of the warm agent (file.heap) and
	// a 20 s CPU profile taken while the measurements below run (and one,
	// file.cnp, while those with ClusterNetworkPolicies run).
	profile := os.Getenv("NFTPOL_SCALE_PROFILE")
	start = time.Now()
	agent, startProfiled := startScaleAgent(b, cp, bed.Nodes[0], profile)
	defer startProfiled()
	ready := time.Since(start)
	time.Sleep(3 * time.Second) // let the first syncs and the GC settle
	metricsURL := "http://" + agent.MetricsAddr + "/metrics"
	warm := scrape(b, metricsURL)
	rss, err := agent.RSSBytes()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(rss)/(1<<20), "agent-RSS-MiB")
	b.ReportMetric(warm["go_memstats_heap_inuse_bytes"]/(1<<20), "agent-heap-MiB")
	b.ReportMetric(ready.Seconds(), "start-to-ready-s")

	if profile != "" {
		if err := saveProfile("http://"+agent.MetricsAddr+"/debug/pprof/heap", profile+".heap"); err != nil {
			b.Errorf("heap profile: %v", err)
		}
	}
	defer cpuProfile(b, agent.MetricsAddr, profile)()

	// Policy to enforcement, both ways.
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "lat", Name: "isolate-server"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "lat-server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	policies := cs.NetworkingV1().NetworkPolicies("lat")
	npLatency := enforcementLatency{
		what: "policy",
		kind: "networkpolicy",
		create: func() error {
			_, err := policies.Create(ctx, pol, metav1.CreateOptions{})
			return err
		},
		remove: func() error { return policies.Delete(ctx, pol.Name, metav1.DeleteOptions{}) },
	}
	npLatency.measure(b, metricsURL, client, server, "")

	// One pod change at a time: a remote api pod joins the peer sets of
	// its team's policies, leaves them by a relabel, comes back, is
	// deleted.
	changes := []*syncSamples{{name: "add"}, {name: "relabel"}, {name: "delete"}}
	pods := cs.CoreV1().Pods("ns-1")
	for rep := 0; rep < 10; rep++ {
		name := fmt.Sprintf("probe-pod-%d", rep)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns-1", Name: name, Labels: map[string]string{"app": "app-1", "tier": "api"}},
			Spec:       corev1.PodSpec{NodeName: "elsewhere", Containers: []corev1.Container{{Name: "c", Image: "none"}}},
		}
		created, err := pods.Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		settle(b, metricsURL)
		ip4, ip6 := fmt.Sprintf("10.254.0.%d", rep+1), fmt.Sprintf("fd00:254::%x", rep+1)
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip4, PodIPs: []corev1.PodIP{{IP: ip4}, {IP: ip6}}}
		measureSync(b, metricsURL, changes[0], func() error {
			created, err = pods.UpdateStatus(ctx, created, metav1.UpdateOptions{})
			return err
		})
		measureSync(b, metricsURL, changes[1], func() error {
			created.Labels = map[string]string{"app": "app-1", "tier": "db"}
			created, err = pods.Update(ctx, created, metav1.UpdateOptions{})
			return err
		})
		created.Labels = map[string]string{"app": "app-1", "tier": "api"}
		if _, err := pods.Update(ctx, created, metav1.UpdateOptions{}); err != nil {
			b.Fatal(err)
		}
		settle(b, metricsURL)
		zero := int64(0)
		measureSync(b, metricsURL, changes[2], func() error {
			return pods.Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
		})
	}
	for _, c := range changes {
		b.ReportMetric(ms(percentile(c.durs, 50)), "pod-"+c.name+"-sync-p50-ms")
		sort.Float64s(c.elements)
		b.ReportMetric(c.elements[len(c.elements)/2], "pod-"+c.name+"-elements")
		b.Logf("one pod %s: sync p50 %s p90 %s, elements changed %v", c.name, percentile(c.durs, 50), percentile(c.durs, 90), c.elements)
	}
	measureWithClusterPolicies(b, cp, agent.MetricsAddr, client, server, npLatency, profile)

	final := scrape(b, metricsURL)
	rssEnd, err := agent.RSSBytes()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(rssEnd)/(1<<20), "agent-RSS-end-MiB")
	if profile != "" {
		if err := saveProfile("http://"+agent.MetricsAddr+"/debug/pprof/heap", profile+".heap-end"); err != nil {
			b.Errorf("heap profile at the end: %v", err)
		}
	}
	b.Logf("table: %v sets, %v elements, %v rules; %v local policies; agent RSS %.1f MiB warm, %.1f MiB at the end; Go heap %.1f MiB warm, %.1f MiB at the end",
		final["nftpol_sets"], final["nftpol_set_elements"], final["nftpol_rules"], final["nftpol_policies"],
		float64(rss)/(1<<20), float64(rssEnd)/(1<<20), warm["go_memstats_heap_inuse_bytes"]/(1<<20), final["go_memstats_heap_inuse_bytes"]/(1<<20))
	measureRestarts(b, cp, bed.Nodes[0], agent, scaleAgentArgs)
}

// enforcementLatency is one kind of object whose creation isolates the
// server and whose deletion lifts the isolation.
type enforcementLatency struct {
	what string // for the log
	// kind is the agent's label for the change in its programming
	// latency metric.
	kind           string
	create, remove func() error
}

// latencyReps is how many times each latency is sampled.
const latencyReps = 25

// measure times, latencyReps times, from the API write creating the
// object to the first probe from client to server the kernel refuses, and
// from its deletion to the first probe that connects again, and reports
// the percentiles as <prefix>apply-p50-ms etc. It logs what the agent's
// metrics say of the same time: how many syncs ran, their mean duration,
// and the mean time from the agent receiving the change to its commit.
func (l enforcementLatency) measure(b *testing.B, metricsURL string, client, server *testbed.Pod, prefix string) {
	b.Helper()
	before := scrape(b, metricsURL)
	var apply, remove []time.Duration
	for rep := 0; rep < latencyReps; rep++ {
		t0 := time.Now()
		if err := l.create(); err != nil {
			b.Fatalf("rep %d: creating the %s: %v", rep, l.what, err)
		}
		if err := waitProbe(client, server, false); err != nil {
			b.Fatalf("rep %d: the %s did not take effect: %v", rep, l.what, err)
		}
		apply = append(apply, time.Since(t0))
		t0 = time.Now()
		if err := l.remove(); err != nil {
			b.Fatalf("rep %d: deleting the %s: %v", rep, l.what, err)
		}
		if err := waitProbe(client, server, true); err != nil {
			b.Fatalf("rep %d: the deletion of the %s did not take effect: %v", rep, l.what, err)
		}
		remove = append(remove, time.Since(t0))
	}
	after := scrape(b, metricsURL)
	delta := func(name string) float64 { return after[name] - before[name] }
	changes := float64(2 * latencyReps)
	cpu := 1000 * delta("process_cpu_seconds_total") / changes
	sync := 1000 * delta("nftpol_sync_duration_seconds_sum") / delta("nftpol_sync_duration_seconds_count")
	programming := func(stat string) float64 {
		return delta(fmt.Sprintf("nftpol_programming_latency_seconds_%s{kind=%q}", stat, l.kind))
	}
	b.ReportMetric(ms(percentile(apply, 50)), prefix+"apply-p50-ms")
	b.ReportMetric(ms(percentile(apply, 90)), prefix+"apply-p90-ms")
	b.ReportMetric(ms(percentile(remove, 50)), prefix+"delete-p50-ms")
	b.ReportMetric(ms(percentile(remove, 90)), prefix+"delete-p90-ms")
	b.ReportMetric(cpu, prefix+"agent-cpu-ms/change")
	b.ReportMetric(sync, prefix+"sync-mean-ms")
	// One line: a benchmark's log keeps its first ten.
	b.Logf("%s to enforcement (%sapply-*, %sdelete-*) over %d reps: apply p50 %s p90 %s max %s; delete p50 %s p90 %s max %s; "+
		"agent meanwhile: %.0f syncs, mean %.1f ms; %.1f ms CPU per change; %s received to committed mean %.1f ms",
		l.what, prefix, prefix, len(apply),
		percentile(apply, 50), percentile(apply, 90), percentile(apply, 100),
		percentile(remove, 50), percentile(remove, 90), percentile(remove, 100),
		delta("nftpol_syncs_total"), sync, cpu, l.kind, 1000*programming("sum")/programming("count"))
}

// measureWithClusterPolicies writes the 100 ClusterNetworkPolicies of
// clusterPolicyMix (issue 14) over the scale cluster, then measures again
// the NetworkPolicy's latency (reported as cnps-np-*) and that of a
// ClusterNetworkPolicy: an Admin Deny of all ingress to the server, ahead
// of the mix (cnp-*).
func measureWithClusterPolicies(b *testing.B, cp *testbed.ControlPlane, agentAddr string, client, server *testbed.Pod, np enforcementLatency, profile string) {
	b.Helper()
	metricsURL := "http://" + agentAddr + "/metrics"
	ctx := context.Background()
	mix := clusterPolicyMix(cnpMixSite{
		serverNS: selPtr("ns", "lat"), serverPod: selPtr("app", "lat-server"),
		clientNS: selPtr("ns", "lat"), clientPod: selPtr("app", "lat-client"),
		otherNS:  func(i int) *metav1.LabelSelector { return selPtr("team", fmt.Sprintf("t%d", i%20)) },
		otherPod: func(i int) *metav1.LabelSelector { return selPtr("app", fmt.Sprintf("app-%d", i%10)) },
		ports:    []int32{80},
	})
	for _, c := range mix.policies {
		if err := cp.Client.Create(ctx, c); err != nil {
			b.Fatalf("creating ClusterNetworkPolicy %s: %v", c.Name, err)
		}
	}
	settle(b, metricsURL)
	selecting := scrape(b, metricsURL)["nftpol_cluster_policies"]
	b.ReportMetric(selecting, "cnps-local")
	b.Logf("%d ClusterNetworkPolicies written, %v of them select local pods", len(mix.policies), selecting)
	if err := waitProbe(client, server, true); err != nil {
		b.Fatalf("with the ClusterNetworkPolicies: %v", err)
	}
	if profile != "" {
		defer cpuProfile(b, agentAddr, profile+".cnp")()
	}
	np.measure(b, metricsURL, client, server, "cnps-np-")

	deny := withIngressRules(clusterPolicyOnPods("isolate-server", adminTier, 0, selPtr("ns", "lat"), selPtr("app", "lat-server")),
		cnpFrom(cnpDeny, fromNamespaces(selPtr())))
	enforcementLatency{
		what:   "ClusterNetworkPolicy",
		kind:   "clusternetworkpolicy",
		create: func() error { return cp.Client.Create(ctx, deny.DeepCopy()) },
		remove: func() error { return cp.Client.Delete(ctx, deny.DeepCopy()) },
	}.measure(b, metricsURL, client, server, "cnp-")
}

// syncSamples are the syncs that followed one kind of change.
type syncSamples struct {
	name     string
	durs     []time.Duration
	elements []float64
}

// measureSync runs one change and waits for the sync it causes, then
// records that sync's duration and the elements it changed, read from the
// agent's histograms.
func measureSync(b *testing.B, url string, into *syncSamples, change func() error) {
	b.Helper()
	before := scrape(b, url)
	if err := change(); err != nil {
		b.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 0; ; attempt++ {
		// Not faster, and not at once: every scrape reads the kernel's
		// counters (a few ms of the agent's CPU at 10k pods), and a
		// scrape right after the change would run next to the very sync
		// measured, which a real scrape interval (15 s and more) almost
		// never does.
		time.Sleep(100 * time.Millisecond)
		after := scrape(b, url)
		if n := after["nftpol_syncs_total"] - before["nftpol_syncs_total"]; n >= 1 {
			count := after["nftpol_sync_duration_seconds_count"] - before["nftpol_sync_duration_seconds_count"]
			sum := after["nftpol_sync_duration_seconds_sum"] - before["nftpol_sync_duration_seconds_sum"]
			elems := after[`nftpol_sync_changes_sum{kind="elements"}`] - before[`nftpol_sync_changes_sum{kind="elements"}`]
			into.durs = append(into.durs, time.Duration(sum/count*float64(time.Second)))
			into.elements = append(into.elements, elems/n)
			return
		}
		if time.Now().After(deadline) || attempt > 500 {
			b.Fatalf("no sync within 10 s after a pod %s", into.name)
		}
	}
}

// settle waits until the agent's sync count stays put for 300 ms.
func settle(b *testing.B, url string) {
	b.Helper()
	last := scrape(b, url)["nftpol_syncs_total"]
	for attempt := 0; attempt < 50; attempt++ {
		time.Sleep(300 * time.Millisecond)
		now := scrape(b, url)["nftpol_syncs_total"]
		if now == last {
			return
		}
		last = now
	}
	b.Fatal("the agent keeps syncing")
}

// waitProbe probes from client to server (TCP 80, IPv4) until the outcome
// is the wanted one, for at most 5 s.
func waitProbe(client, server *testbed.Pod, wantConnect bool) error {
	deadline := time.Now().Add(5 * time.Second)
	for attempt := 0; attempt < 20000; attempt++ {
		err := testbed.Probe(client, server.IPv4, testbed.TCP, 80, server.Key(), 200*time.Millisecond)
		if (err == nil) == wantConnect {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("still connect=%v after 5 s: %v", !wantConnect, err)
		}
	}
	return errors.New("probe budget exhausted")
}

// cpuProfile starts a 20 s CPU profile of the agent at agentAddr, saved to
// path, unless path is ""; the function it returns waits for the profile.
// startScaleAgent starts the agent of the scale run on node and waits
// for it to be ready. With a profile path it also takes a 10 s CPU
// profile of its start (path.start), asked for as soon as its metrics
// server answers, which it starts before listing anything; wait returns
// when that profile is saved.
// scaleAgentArgs are the flags of the scale benchmark's agent.
var scaleAgentArgs = []string{"--deny-action", "reject", "--profiling"}

func startScaleAgent(b *testing.B, cp *testbed.ControlPlane, node *testbed.Node, profile string) (agent *testbed.Agent, wait func()) {
	b.Helper()
	args := scaleAgentArgs
	if profile == "" {
		return testbed.StartAgentT(b, cp, node, args...), func() {}
	}
	a := testbed.StartAgentUnreadyT(b, cp, node, args...)
	saved := make(chan error, 1)
	go func() {
		url := "http://" + a.MetricsAddr + "/debug/pprof/profile?seconds=10"
		var err error
		for attempt := 0; attempt < 250; attempt++ { // 5 s at most
			if err = saveProfile(url, profile+".start"); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		saved <- err
	}()
	if err := a.WaitReady(context.Background(), 30*time.Second); err != nil {
		b.Fatal(err)
	}
	return a, func() {
		if err := <-saved; err != nil {
			b.Errorf("profile of the agent's start: %v", err)
		}
	}
}

func cpuProfile(b *testing.B, agentAddr, path string) (wait func()) {
	done := make(chan struct{})
	if path == "" {
		close(done)
		return func() {}
	}
	go func() {
		defer close(done)
		if err := saveProfile("http://"+agentAddr+"/debug/pprof/profile?seconds=20", path); err != nil {
			b.Errorf("profile: %v", err)
		}
	}()
	return func() { <-done }
}

func saveProfile(url, path string) error {
	resp, err := (&http.Client{Timeout: time.Minute}).Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func percentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// writeCluster writes the namespaces, pods (with their status) and
// policies of s to the API server with parallel writers; pods of
// selectorstest.ScaleNode go to node.
func writeCluster(ctx context.Context, cs kubernetes.Interface, s *selectors.State, node string) error {
	run := func(n int, write func(i int) error) error {
		const workers = 32
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		next := make(chan int)
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range next {
					if err := write(i); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		var err error
	feed:
		for i := 0; i < n; i++ {
			select {
			case next <- i:
			case err = <-errs:
				break feed
			}
		}
		close(next)
		wg.Wait()
		if err == nil {
			select {
			case err = <-errs:
			default:
			}
		}
		return err
	}
	if err := run(len(s.Namespaces), func(i int) error {
		ns := s.Namespaces[i]
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns.Name, Labels: ns.Labels}}, metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("writing namespaces: %w", err)
	}
	if err := run(len(s.Pods), func(i int) error {
		p := s.Pods[i]
		nodeName := p.NodeName
		if nodeName == selectorstest.ScaleNode {
			nodeName = node
		}
		obj := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels},
			Spec:       corev1.PodSpec{NodeName: nodeName, Containers: []corev1.Container{{Name: "c", Image: "none", Ports: containerPorts(p.Ports)}}},
		}
		created, err := cs.CoreV1().Pods(p.Namespace).Create(ctx, obj, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IPs[0].String()}
		for _, ip := range p.IPs {
			created.Status.PodIPs = append(created.Status.PodIPs, corev1.PodIP{IP: ip.String()})
		}
		_, err = cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("writing pods: %w", err)
	}
	if err := run(len(s.Policies), func(i int) error {
		_, err := cs.NetworkingV1().NetworkPolicies(s.Policies[i].Namespace).Create(ctx, s.Policies[i], metav1.CreateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("writing policies: %w", err)
	}
	return nil
}

func containerPorts(ports []selectors.NamedPort) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, p := range ports {
		out = append(out, corev1.ContainerPort{Name: p.Name, ContainerPort: int32(p.Port), Protocol: corev1.Protocol(strings.ToUpper(p.Protocol.String()))})
	}
	return out
}
