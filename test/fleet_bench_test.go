package test

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors/selectorstest"
	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

// Shape of the fleet run (issue 15): 50 nodes, 10k pods spread over them,
// 100 policies, 100 pod changes per second.
const (
	fleetNodes      = 50
	fleetPods       = 10_000
	fleetChangeRate = 100 // per second
	fleetChurn      = 20 * time.Second
	fleetMarkEvery  = 500 * time.Millisecond
	fleetMarkNS     = "fl-mark"
	fleetIdle       = 10 * time.Second
)

// BenchmarkFleet measures what a fleet of agents costs the API server:
// one real kube-apiserver and etcd, 50 Node objects, 10k pods spread over
// them, 100 policies, and N agent processes (each on its own node and
// network namespace) whose connections go through a byte-counting relay.
// Four phases of 20 s at up to 100 pod changes/s (label changes that move
// pods in and out of peer sets; 32 writers, the rate reached is logged),
// side by side in one run: no agents (the API server's own cost of the
// writes), then the same N agents watching in protobuf, in JSON, and in
// protobuf without gzip (the API server gzips each event of a watch-list
// stream for every watcher that accepts it). Per phase:
//   - API server CPU seconds (/proc/PID/stat of kube-apiserver) above the
//     no-agent phase, per pod change and agent;
//   - bytes sent to the agents, per pod change and agent, and per agent at
//     start (the initial lists);
//   - convergence: twice a second a marker pod joins a peer set that every
//     agent's table holds; from the write to the first read of each
//     agent's kernel set that holds its address (polled every 10 ms);
//     p50/p90 of the slowest agent per marker ("every agent committed")
//     and of all agent samples;
//   - the agents' RSS once warm and at the end.
//
// NFTPOL_FLEET_AGENTS sets N (default 50, at most 50).
//
//	go test -run '^$' -bench Fleet -benchtime 1x -timeout 60m ./test/
func BenchmarkFleet(b *testing.B) {
	agents := fleetNodes
	if env := os.Getenv("NFTPOL_FLEET_AGENTS"); env != "" {
		n, err := strconv.Atoi(env)
		if err != nil || n < 1 || n > fleetNodes {
			b.Fatalf("NFTPOL_FLEET_AGENTS=%q: want 1..%d", env, fleetNodes)
		}
		agents = n
	}
	b.Run(fmt.Sprintf("agents=%d", agents), func(b *testing.B) {
		for b.Loop() {
			runFleet(b, agents)
		}
	})
}

// fleet is the cluster of one run.
type fleet struct {
	cs     kubernetes.Interface
	cp     *testbed.ControlPlane
	proxy  *testbed.APIProxy
	nodes  []*testbed.Node
	churn  []podRef // pods the churn relabels, round robin
	apiPID int
	// marks counts marker pods across phases (names stay unique); next
	// is the next index into churn.
	marks, next int
	// idleCPU is the API server's CPU seconds per second with no writes
	// and no agents.
	idleCPU float64
}

// podRef is a pod the churn relabels, and the tier it moves to.
type podRef struct{ ns, name, nextTier string }

func runFleet(b *testing.B, nAgents int) {
	ctx := context.Background()
	cp := testbed.StartControlPlaneT(b)
	cfg := rest.CopyConfig(cp.Config)
	cfg.QPS, cfg.Burst = 5000, 10000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	f := &fleet{cs: cs, cp: cp, proxy: testbed.StartAPIProxyT(b, cp)}
	if f.apiPID, err = apiServerPID(cp.Config.Host); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < fleetNodes; i++ {
		name := fmt.Sprintf("fl-node-%d", i)
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		node := &testbed.Node{Name: name}
		if i < nAgents {
			node.NetNSPath = kerneltest.Netns(b, e2ePrefix+"fl")
		}
		f.nodes = append(f.nodes, node)
	}

	// ScaleCluster's namespaces and pods, every pod on one of the 50
	// nodes (each node then has a pod in every namespace), and 100 of its
	// allow policies: 50 ingress-only, 50 with egress.
	start := time.Now()
	state := selectorstest.ScaleCluster(fleetPods, 600, 200)
	for i, p := range state.Pods {
		p.NodeName = f.nodes[i%fleetNodes].Name
		next := map[string]string{"web": "api", "api": "db", "db": "web"}[p.Labels["tier"]]
		f.churn = append(f.churn, podRef{p.Namespace, p.Name, next})
	}
	nNS := len(state.Namespaces)
	var policies []*networkingv1.NetworkPolicy
	for i, np := range state.Policies {
		ns, k := i%nNS, i/nNS
		if (k == 1 && ns < 50) || (k == 2 && ns >= 50 && ns < 100) {
			policies = append(policies, np)
		}
	}
	state.Policies = policies
	if err := writeCluster(ctx, cs, state, ""); err != nil {
		b.Fatal(err)
	}
	if err := f.writeMarkerPolicy(ctx); err != nil {
		b.Fatal(err)
	}
	b.Logf("wrote %d nodes, %d pods, %d namespaces, %d policies in %s", fleetNodes, len(state.Pods), nNS, len(state.Policies)+1, time.Since(start).Round(time.Second))
	if _, err := testbed.AgentBinary(); err != nil {
		b.Fatal(err)
	}

	// The API server's own background work goes on whatever is written:
	// its rate is taken off every phase, which may reach different
	// change rates on a loaded machine.
	cpu0 := f.apiCPU(b)
	time.Sleep(fleetIdle)
	f.idleCPU = (f.apiCPU(b) - cpu0) / fleetIdle.Seconds()
	base := f.churnPhase(b, ctx, nil)
	basePerChange := (base.cpu - f.idleCPU*fleetChurn.Seconds()) / float64(base.changes)
	b.Logf("idle API server: %.3f CPU-s/s; no agents: %d changes (%.0f/s), API server %.2f CPU-s (%.2f ms per change above idle); load %s",
		f.idleCPU, base.changes, float64(base.changes)/fleetChurn.Seconds(), base.cpu, basePerChange*1e3, loadavg())
	b.ReportMetric(basePerChange*1e3, "apiserver-CPU-ms/change-no-agents")
	// NFTPOL_FLEET_WIRES=protobuf,json runs only those phases.
	only := os.Getenv("NFTPOL_FLEET_WIRES")
	for _, wire := range []struct{ tag, format, gzip string }{
		{"protobuf", "protobuf", "true"},
		{"json", "json", "true"},
		{"protobuf-nogzip", "protobuf", "false"},
	} {
		if only != "" && !slices.Contains(strings.Split(only, ","), wire.tag) {
			continue
		}
		f.agentPhase(b, ctx, nAgents, wire.tag, basePerChange,
			"--api-wire-format", wire.format, "--api-compression="+wire.gzip)
	}
}

// phaseCost is what one churn phase cost.
type phaseCost struct {
	changes int
	cpu     float64 // API server CPU seconds
	bytes   int64   // sent to the agents
	// converge are per marker the slowest agent's delay; each are all
	// agents' delays.
	converge, each []time.Duration
}

// agentPhase starts the agents with one wire format, measures their start
// and a churn phase, and stops them.
func (f *fleet) agentPhase(b *testing.B, ctx context.Context, n int, format string, baseCPUPerChange float64, wireArgs ...string) {
	logDir := b.TempDir()
	cpu0, bytes0 := f.apiCPU(b), f.proxy.BytesSent()
	started := time.Now()
	args := append([]string{
		"--kubeconfig", f.proxy.Kubeconfig,
		// Not scraped here: one port less to collide.
		"--metrics-bind-address", "0",
		// No connections exist in these namespaces: nothing to cut.
		"--cut-denied-flows=false"}, wireArgs...)
	var agents []*testbed.Agent
	for _, node := range f.nodes[:n] {
		a, err := testbed.StartAgent(f.cp, node, logDir, args...)
		if err != nil {
			b.Fatal(err)
		}
		agents = append(agents, a)
	}
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		for _, a := range agents {
			_ = a.Kill()
		}
	}
	defer func() {
		if b.Failed() {
			for _, a := range agents {
				b.Logf("log of the agent of %s:\n%s", a.Node.Name, lastLines(a.Log(), 30))
			}
		}
		stop()
	}()
	// 50 agents listing 10k pods at once on a loaded machine take
	// minutes; WaitReady gives up after 1000 probes.
	waitReady := func(a *testbed.Agent) error {
		deadline := time.Now().Add(10 * time.Minute)
		err := a.WaitReady(ctx, 10*time.Minute)
		for attempt := 0; err != nil && !a.Exited() && time.Now().Before(deadline) && attempt < 100; attempt++ {
			err = a.WaitReady(ctx, time.Until(deadline))
		}
		return err
	}
	for i, a := range agents {
		err := waitReady(a)
		// The health port was free when picked, but 50 agents starting
		// at once (and other tests) may take it first: start that one
		// again on another port, a few times at most.
		for retry := 0; err != nil && retry < 3 && a.Exited() && strings.Contains(a.Log(), "address already in use"); retry++ {
			if a, err = testbed.StartAgent(f.cp, a.Node, b.TempDir(), args...); err != nil {
				break
			}
			agents[i] = a
			err = waitReady(a)
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	ready := time.Since(started)
	time.Sleep(3 * time.Second) // first syncs and GC settle
	startCPU := f.apiCPU(b) - cpu0 - f.idleCPU*time.Since(started).Seconds()
	startBytes := f.proxy.BytesSent() - bytes0
	rssWarm := fleetRSS(b, agents)

	views := make([]*markView, n)
	for i, a := range agents {
		views[i] = newMarkView(b, a.Node.NetNSPath)
	}
	cost := f.churnPhase(b, ctx, views)
	rssEnd := fleetRSS(b, agents)
	stop()

	agentCPU := cost.cpu - f.idleCPU*fleetChurn.Seconds() - baseCPUPerChange*float64(cost.changes)
	perChangeAgent := float64(cost.changes * n)
	tag := "-" + format
	b.ReportMetric(agentCPU/perChangeAgent*1e6, "apiserver-CPU-us/change/agent"+tag)
	b.ReportMetric(float64(cost.bytes)/perChangeAgent, "bytes/change/agent"+tag)
	b.ReportMetric(float64(startBytes)/float64(n)/(1<<20), "start-MiB/agent"+tag)
	b.ReportMetric(startCPU/float64(n)*1e3, "start-apiserver-CPU-ms/agent"+tag)
	b.ReportMetric(ms(percentile(cost.converge, 50)), "converge-all-p50-ms"+tag)
	b.ReportMetric(ms(percentile(cost.converge, 90)), "converge-all-p90-ms"+tag)
	b.ReportMetric(ms(percentile(cost.each, 90)), "converge-agent-p90-ms"+tag)
	b.ReportMetric(rssWarm/float64(n)/(1<<20), "agent-RSS-MiB"+tag)
	b.ReportMetric(rssEnd/float64(n)/(1<<20), "agent-RSS-end-MiB"+tag)
	b.Logf("%d agents, %s: ready in %s; start: %.1f MiB and %.2f API server CPU-s per agent; churn: %d changes (%.0f/s), API server %.2f CPU-s (%.2f above idle and the writes alone), %.1f MiB sent; "+
		"per change and agent %.0f bytes, %.1f µs API server CPU; convergence over %d markers, slowest agent p50 %s p90 %s max %s, any agent p50 %s p90 %s; "+
		"agents' RSS %.0f MiB warm (%.1f each), %.0f MiB at the end; load %s",
		n, format, ready.Round(time.Second), float64(startBytes)/float64(n)/(1<<20), startCPU/float64(n),
		cost.changes, float64(cost.changes)/fleetChurn.Seconds(), cost.cpu, agentCPU, float64(cost.bytes)/(1<<20),
		float64(cost.bytes)/perChangeAgent, agentCPU/perChangeAgent*1e6, len(cost.converge),
		percentile(cost.converge, 50), percentile(cost.converge, 90), percentile(cost.converge, 100),
		percentile(cost.each, 50), percentile(cost.each, 90),
		rssWarm/(1<<20), rssWarm/float64(n)/(1<<20), rssEnd/(1<<20), loadavg())
}

// churnPhase changes fleetChangeRate pods a second for fleetChurn and,
// with views, turns a marker pod on twice a second and waits until every
// view's kernel set holds it.
func (f *fleet) churnPhase(b *testing.B, ctx context.Context, views []*markView) phaseCost {
	// The marker pods of this phase exist before the clock starts.
	nMarks := int(fleetChurn / fleetMarkEvery)
	var marks []*marker
	if views != nil {
		var err error
		// One more, turned on first: it finds the set in each table.
		if marks, err = f.createMarkers(ctx, nMarks+1); err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := f.markOn(ctx, marks[0]); err != nil {
			b.Fatal(err)
		}
		for _, v := range views {
			if err := v.find(marks[0].ip, t0.Add(2*time.Minute)); err != nil {
				b.Fatal(err)
			}
		}
		marks = marks[1:]
	}

	cpu0, bytes0 := f.apiCPU(b), f.proxy.BytesSent()
	var changes atomic.Int64
	var failed atomic.Value
	work := make(chan podRef, fleetChangeRate)
	var wg sync.WaitGroup
	// Enough writers that the API server's latency under load does not
	// bound the rate.
	for w := 0; w < 32; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for p := range work {
				patch := fmt.Sprintf(`{"metadata":{"labels":{"tier":%q}}}`, p.nextTier)
				if _, err := f.cs.CoreV1().Pods(p.ns).Patch(ctx, p.name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
					failed.Store(err)
					continue
				}
				changes.Add(1)
			}
		}()
	}
	watch := newMarkWatch(views)
	tick := time.NewTicker(time.Second / fleetChangeRate)
	begin := time.Now()
	marked := 0
	for now := range tick.C {
		if now.Sub(begin) >= fleetChurn {
			break
		}
		if views != nil && marked < len(marks) && now.Sub(begin) >= time.Duration(marked)*fleetMarkEvery {
			m := marks[marked]
			m.written = time.Now()
			if err := f.markOn(ctx, m); err != nil {
				b.Fatal(err)
			}
			watch.add(m)
			marked++
			changes.Add(1)
			continue
		}
		select {
		case work <- f.nextChange():
		default: // the writers are behind: this tick's change is skipped
		}
	}
	tick.Stop()
	close(work)
	wg.Wait()
	cost := phaseCost{changes: int(changes.Load()), cpu: f.apiCPU(b) - cpu0, bytes: f.proxy.BytesSent() - bytes0}
	var err error
	if cost.converge, cost.each, err = watch.wait(3 * time.Minute); err != nil {
		b.Fatal(err)
	}
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
	return cost
}

// nextChange returns the next pod to relabel: each pod moves to the next
// tier (web, api, db, web: in and out of the peers the policies select),
// and every phase changes pods the earlier ones did not, so that every
// patch is a change (a patch that changes nothing sends no event).
func (f *fleet) nextChange() podRef {
	p := f.churn[f.next%len(f.churn)]
	f.next++
	return p
}

// markWatch polls every agent's marker set (one goroutine per agent,
// every 10 ms) and records when each marker appeared there.
type markWatch struct {
	views []*markView
	mu    sync.Mutex
	marks []*marker
	// seen[m][v] is the delay of marker m in view v, 0 while not seen.
	seen [][]time.Duration
	stop chan struct{}
	done sync.WaitGroup
}

func newMarkWatch(views []*markView) *markWatch {
	w := &markWatch{views: views, stop: make(chan struct{})}
	for i, v := range views {
		w.done.Add(1)
		go w.poll(i, v)
	}
	return w
}

func (w *markWatch) add(m *marker) {
	w.mu.Lock()
	w.marks = append(w.marks, m)
	w.seen = append(w.seen, make([]time.Duration, len(w.views)))
	w.mu.Unlock()
}

func (w *markWatch) poll(i int, v *markView) {
	defer w.done.Done()
	for {
		select {
		case <-w.stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
		w.mu.Lock()
		var open []int
		for m := range w.marks {
			if w.seen[m][i] == 0 {
				open = append(open, m)
			}
		}
		w.mu.Unlock()
		if len(open) == 0 {
			continue
		}
		held, err := v.addrs()
		now := time.Now()
		if err != nil {
			continue // read again; a marker never seen fails the run
		}
		w.mu.Lock()
		for _, m := range open {
			if held[w.marks[m].ip] {
				w.seen[m][i] = max(now.Sub(w.marks[m].written), time.Nanosecond)
			}
		}
		w.mu.Unlock()
	}
}

// wait waits until every agent saw every marker (for at most timeout),
// stops the pollers and returns per marker the slowest agent's delay, and
// every agent's delays.
func (w *markWatch) wait(timeout time.Duration) (slowest, each []time.Duration, err error) {
	defer func() {
		close(w.stop)
		w.done.Wait()
	}()
	if len(w.views) == 0 {
		return nil, nil, nil
	}
	deadline := time.Now().Add(timeout)
	for attempt := 0; ; attempt++ {
		w.mu.Lock()
		missing := 0
		for m := range w.marks {
			for v := range w.views {
				if w.seen[m][v] == 0 {
					missing++
				}
			}
		}
		if missing == 0 {
			for m := range w.marks {
				slowest = append(slowest, percentile(w.seen[m], 100))
				each = append(each, w.seen[m]...)
			}
			w.mu.Unlock()
			return slowest, each, nil
		}
		w.mu.Unlock()
		if time.Now().After(deadline) || attempt > int(timeout/(50*time.Millisecond)) {
			return nil, nil, fmt.Errorf("%d marker sightings missing after %s", missing, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// marker is a pod that joins the marker policy's peers when turned on.
type marker struct {
	ns, name string
	ip       netip.Addr
	written  time.Time
}

// writeMarkerPolicy writes the namespace of the markers, one anchor pod on
// every node, and a policy isolating the anchors that allows the pods
// labeled marker=on: every agent's table holds the markers' addresses in
// one set.
func (f *fleet) writeMarkerPolicy(ctx context.Context) error {
	if _, err := f.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: fleetMarkNS}}, metav1.CreateOptions{}); err != nil {
		return err
	}
	for i, node := range f.nodes {
		ip := netip.AddrFrom4([4]byte{10, 251, byte(i >> 8), byte(i)})
		if err := f.createPod(ctx, fmt.Sprintf("anchor-%d", i), node.Name, map[string]string{"role": "anchor"}, ip); err != nil {
			return err
		}
	}
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: fleetMarkNS, Name: "markers"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "anchor"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"marker": "on"}}}}}},
		},
	}
	_, err := f.cs.NetworkingV1().NetworkPolicies(fleetMarkNS).Create(ctx, pol, metav1.CreateOptions{})
	return err
}

// createPod creates a running pod in the markers' namespace.
func (f *fleet) createPod(ctx context.Context, name, node string, labels map[string]string, ip netip.Addr) error {
	pods := f.cs.CoreV1().Pods(fleetMarkNS)
	created, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "none"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	created.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}}
	_, err = pods.UpdateStatus(ctx, created, metav1.UpdateOptions{})
	return err
}

// createMarkers creates n marker pods, off, on a node without an agent.
func (f *fleet) createMarkers(ctx context.Context, n int) ([]*marker, error) {
	var out []*marker
	for i := 0; i < n; i++ {
		f.marks++
		m := &marker{ns: fleetMarkNS, name: fmt.Sprintf("marker-%d", f.marks),
			ip: netip.AddrFrom4([4]byte{10, 250, byte(f.marks >> 8), byte(f.marks)})}
		if err := f.createPod(ctx, m.name, "fl-elsewhere", map[string]string{"marker": "off"}, m.ip); err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, nil
}

func (f *fleet) markOn(ctx context.Context, m *marker) error {
	_, err := f.cs.CoreV1().Pods(m.ns).Patch(ctx, m.name, types.MergePatchType, []byte(`{"metadata":{"labels":{"marker":"on"}}}`), metav1.PatchOptions{})
	return err
}

// apiCPU returns the CPU seconds the API server process used so far.
func (f *fleet) apiCPU(b *testing.B) float64 {
	b.Helper()
	s, err := processCPU(f.apiPID)
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// markView reads one agent's table: the set that holds the markers.
type markView struct {
	conn  *nftables.Conn
	table *nftables.Table
	set   *nftables.Set
}

func newMarkView(b *testing.B, netnsPath string) *markView {
	b.Helper()
	fd, err := os.Open(netnsPath)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fd.Close() })
	// Lasting: one socket for the thousands of reads of a run.
	conn, err := nftables.New(nftables.AsLasting(), nftables.WithNetNSFd(int(fd.Fd())))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.CloseLasting() })
	return &markView{conn: conn, table: &nftables.Table{Name: nft.DefaultTable, Family: nftables.TableFamilyINet}}
}

// find waits until some plain set of the table holds addr and keeps it.
func (v *markView) find(addr netip.Addr, deadline time.Time) error {
	for attempt := 0; time.Now().Before(deadline) && attempt < 100_000; attempt++ {
		sets, err := v.conn.GetSets(v.table)
		if err == nil {
			for _, s := range sets {
				if s.IsMap || s.Concatenation {
					continue
				}
				if ok, err := v.holds(s, addr); err == nil && ok {
					v.set = s
					return nil
				}
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("no set of the table holds the marker %s", addr)
}

func (v *markView) holds(s *nftables.Set, addr netip.Addr) (bool, error) {
	held, err := v.elements(s)
	return held[addr], err
}

// addrs returns the addresses the marker set holds.
func (v *markView) addrs() (map[netip.Addr]bool, error) { return v.elements(v.set) }

func (v *markView) elements(s *nftables.Set) (map[netip.Addr]bool, error) {
	elems, err := v.conn.GetSetElements(s)
	if err != nil {
		return nil, err
	}
	held := map[netip.Addr]bool{}
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok && !e.IntervalEnd {
			held[a] = true
		}
	}
	return held, nil
}

// apiServerPID finds the kube-apiserver process serving host
// (https://127.0.0.1:PORT) by its --secure-port.
func apiServerPID(host string) (int, error) {
	u, err := url.Parse(host)
	if err != nil {
		return 0, err
	}
	want := "--secure-port=" + u.Port()
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		if filepath.Base(args[0]) != "kube-apiserver" {
			continue
		}
		for _, a := range args {
			if a == want {
				return pid, nil
			}
		}
	}
	return 0, fmt.Errorf("no kube-apiserver process with %s", want)
}

// processCPU returns the user and system CPU seconds of a process
// (/proc/PID/stat fields 14 and 15, in clock ticks of 1/100 s: USER_HZ
// is 100 on every Linux architecture Go supports).
func processCPU(pid int) (float64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces; fields count from the
	// closing parenthesis.
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	fields := strings.Fields(rest)
	if len(fields) < 13 {
		return 0, fmt.Errorf("short /proc/%d/stat", pid)
	}
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("parsing /proc/%d/stat: %q", pid, rest)
	}
	return (utime + stime) / 100, nil
}

// fleetRSS sums the agents' resident memory.
func fleetRSS(b *testing.B, agents []*testbed.Agent) float64 {
	b.Helper()
	var sum float64
	for _, a := range agents {
		rss, err := a.RSSBytes()
		if err != nil {
			b.Fatal(err)
		}
		sum += float64(rss)
	}
	return sum
}

func loadavg() string {
	data, _ := os.ReadFile("/proc/loadavg")
	return strings.TrimSpace(string(data))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
