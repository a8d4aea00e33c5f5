package cluster_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/podstart"
	"github.com/nftpol/nftpol/test/cluster"
	"github.com/nftpol/nftpol/test/kerneltest"
)

// TestNoWindowAtPodStart starts pods under default-deny policies while
// packets hit them from their first instant, through the real kubelet
// path: netnskubelet runs the node's conflist (ptp, host-local, then the
// nftpol-cni plugin the agent DaemonSet's init container chained into it)
// through libcni, and the agent answers the plugin on its socket.
//
//   - ingress: a prober pod connects in a tight loop (TCP, IPv4 and IPv6)
//     to the address a target pod will get, from before the target
//     exists until after it is ready; the target runs a server from its
//     first instant, under a default-deny ingress policy;
//   - egress: a pod under a default-deny egress policy connects in a
//     tight loop to a server pod of the other node, from the first
//     instant of its containers.
//
// A connection that completes (OK) or is refused (REFUSED: a reset from
// the pod's own kernel) is a packet the policy denies that got through.
// Three runs: as deployed (the guard of pod addresses and the plugin);
// the guard alone (the plugin taken out of the conflist); and the
// comparison, the plugin alone (the agent restarted with
// --pod-address-guard=false), where the pod's kernel answers during CNI
// ADD. Then 20 pods start with the plugin and the wait it adds to each
// (the plugin's own log line) is reported as p50/p90.
func TestNoWindowAtPodStart(t *testing.T) {
	c := sharedCluster(t)
	assets := requireCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	node := c.Nodes[0]
	root := filepath.Join(c.Dir, "nodes", node.Name, "root")
	binDir, confDir := filepath.Join(root, "opt/cni/bin"), filepath.Join(root, "etc/cni/net.d")
	conflist, err := podstart.NodeConflist(confDir)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(conflist)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"type": "`+podstart.PluginType+`"`) {
		t.Fatalf("the agent's init container did not chain %s into %s:\n%s", podstart.PluginType, conflist, data)
	}
	t.Logf("node %s conflist %s:\n%s", node.Name, conflist, data)
	waitGuard(ctx, t, node, true)

	both := runPodStartWindow(ctx, t, c, "guard+plugin", 200)
	// Take the plugin out, as config/cleanup does; put it back (as the
	// init container does) when done.
	if err := podstart.Uninstall(binDir, confDir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := podstart.Install(assets.Agent, binDir, confDir, podstart.DefaultSocket); err != nil {
			t.Errorf("reinstalling the plugin: %v", err)
		}
	})
	guardOnly := runPodStartWindow(ctx, t, c, "guard", 220)
	if _, err := podstart.Install(assets.Agent, binDir, confDir, podstart.DefaultSocket); err != nil {
		t.Fatal(err)
	}
	// The comparison: the agents without the guard (a rollout of the
	// DaemonSet), then with it again, as installed.
	setAgentGuard(ctx, t, c, false)
	restored := false
	t.Cleanup(func() {
		if !restored {
			setAgentGuard(context.Background(), t, c, true)
		}
	})
	pluginOnly := runPodStartWindow(ctx, t, c, "plugin", 240)
	setAgentGuard(ctx, t, c, true)
	restored = true

	t.Logf("denied packets through, guard and plugin: %s", both)
	t.Logf("denied packets through, guard only:       %s", guardOnly)
	t.Logf("denied packets through, plugin only:      %s", pluginOnly)
	// With the guard nothing the policies deny gets through, with or
	// without the plugin: no reset from the pod's kernel, no connection.
	for name, w := range map[string]windowCounts{"guard and plugin": both, "guard only": guardOnly} {
		if n := w.through(); n != 0 {
			t.Errorf("%s: %d connections that the policies deny got an answer: %s", name, n, w)
		}
	}
	// The plugin alone keeps the pod's processes from running before
	// its rules are in force, not its kernel from answering during ADD:
	// the resets the guard takes away must show here, or the test does
	// not see the window.
	if n := pluginOnly.egressThrough() + pluginOnly.ingress["v4 OK"] + pluginOnly.ingress["v6 OK"]; n != 0 {
		t.Errorf("plugin only: %d connections that the policies deny completed: %s", n, pluginOnly)
	}
	if pluginOnly.through() == 0 {
		t.Errorf("plugin only: no reset either: the test does not see the window the guard closes (%s)", pluginOnly)
	}

	measurePodStartDelay(ctx, t, c, node, 20)
}

// setAgentGuard rolls the agent DaemonSet out with the guard of pod
// addresses on (as installed) or off, and waits until node 0's table
// shows it.
func setAgentGuard(ctx context.Context, t *testing.T, c *cluster.Cluster, on bool) {
	t.Helper()
	const off = "--pod-address-guard=false"
	dss := c.Clientset.AppsV1().DaemonSets(cluster.AgentNamespace)
	ds, err := dss.Get(ctx, cluster.AgentDaemonSet, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ctr := &ds.Spec.Template.Spec.Containers[0]
	ctr.Args = slices.DeleteFunc(ctr.Args, func(a string) bool { return a == off })
	if !on {
		ctr.Args = append(ctr.Args, off)
	}
	if _, err := dss.Update(ctx, ds, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.WaitAgentsReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	waitGuard(ctx, t, c.Nodes[0], on)
	t.Logf("agents rolled out with the guard %s in %s", map[bool]string{true: "on", false: "off"}[on], time.Since(start).Round(time.Millisecond))
}

// waitGuard waits (at most 1 minute) until node's table has the guard's
// set of pod CIDRs, or has none.
func waitGuard(ctx context.Context, t *testing.T, node *cluster.Node, on bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := kerneltest.NftErr(node.Netns, "list", "set", "inet", nft.DefaultTable, nft.SetPodCIDRsV4)
		if (err == nil) == on {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("node %s: the guard's set after 1m: %v %s, want present=%v", node.Name, err, out, on)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// windowCounts are the outcomes of the loops' connection attempts.
type windowCounts struct {
	ingress, egress map[string]int // outcome (OK, REFUSED, TIMEOUT, ...) -> count
}

func (w windowCounts) through() int {
	n := 0
	for _, m := range []map[string]int{w.ingress, w.egress} {
		for _, f := range []string{"v4", "v6"} {
			n += m[f+" OK"] + m[f+" REFUSED"]
		}
	}
	return n
}

func (w windowCounts) egressThrough() int {
	return w.egress["v4 OK"] + w.egress["v4 REFUSED"] + w.egress["v6 OK"] + w.egress["v6 REFUSED"]
}

func (w windowCounts) String() string {
	return fmt.Sprintf("ingress %v, egress %v", w.ingress, w.egress)
}

// probeEnv makes this test binary the connect loop of a pod's container
// (a container runs host binaries, netnskubelet's images being host
// files): NFTPOL_PODSTART_PROBE=target,stopfile. One process, so the
// first attempt leaves within a millisecond of the container's start
// and the next follow every 2 ms (a shell loop of agnhost connect forks
// a process per attempt: a few attempts per second on this machine).
const probeEnv = "NFTPOL_PODSTART_PROBE"

func init() {
	if arg := os.Getenv(probeEnv); arg != "" {
		target, stop, _ := strings.Cut(arg, ",")
		os.Exit(probeLoop(target, stop))
	}
}

// probeLoop connects to target until the stop file exists (at most
// 60 s, 30000 attempts) and prints one line per attempt: when it started
// (Unix nanoseconds) and its outcome: OK, REFUSED, TIMEOUT (20 ms) or
// OTHER.
func probeLoop(target, stop string) int {
	// Unbuffered: the test reads the first lines while the loop runs.
	out := os.Stdout
	end := time.Now().Add(time.Minute)
	for i := 0; i < 30000 && time.Now().Before(end); i++ {
		if _, err := os.Stat(stop); err == nil {
			break
		}
		fmt.Fprintf(out, "%d ", time.Now().UnixNano())
		conn, err := net.DialTimeout("tcp", target, 20*time.Millisecond)
		var ne net.Error
		switch {
		case err == nil:
			conn.Close()
			fmt.Fprintln(out, "OK")
		case errors.Is(err, syscall.ECONNREFUSED):
			fmt.Fprintln(out, "REFUSED")
		case errors.As(err, &ne) && ne.Timeout():
			fmt.Fprintln(out, "TIMEOUT")
		default:
			fmt.Fprintln(out, "OTHER: "+err.Error())
		}
		time.Sleep(2 * time.Millisecond)
	}
	return 0
}

func runPodStartWindow(ctx context.Context, t *testing.T, c *cluster.Cluster, mode string, hostByte int) windowCounts {
	t.Helper()
	node, other := c.Nodes[0], c.Nodes[1]
	ns := "podstart-" + strings.ReplaceAll(mode, "+", "-")
	cs := c.Clientset.CoreV1()
	if _, err := cs.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	stopDir := t.TempDir()
	for _, np := range []*networkingv1.NetworkPolicy{
		{ObjectMeta: metav1.ObjectMeta{Name: "deny-ingress"}, Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "target"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "deny-egress"}, Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "egress"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}}},
	} {
		if _, err := c.Clientset.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	server := func(name, app string, on *cluster.Node, ips string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": app}},
			Spec: corev1.PodSpec{NodeName: on.Name, Containers: []corev1.Container{{
				Name: "server", Image: agnhost, Args: []string{"netexec", "--http-port=8080"},
			}}},
		}
		if ips != "" {
			p.Annotations = map[string]string{"netnskubelet/ips": ips}
		}
		return p
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The egress side needs a loop that runs from the first millisecond
	// of the container (the test binary's Go start-up takes longer than
	// the agent's commit): bash connects through /dev/tcp, under a 300 ms
	// timeout, and prints the same lines as probeLoop.
	bashLoop := func(target string) []string {
		ap := netip.MustParseAddrPort(target)
		script := fmt.Sprintf(`i=0; while [ $i -lt 3000 ] && [ ! -e %s ]; do t=$(date +%%s%%N); out=$(timeout 0.3 bash -c 'exec 3<>/dev/tcp/%s/%d' 2>&1); rc=$?; `+
			`if [ $rc = 0 ]; then echo "$t OK"; elif [ $rc = 124 ]; then echo "$t TIMEOUT"; else case "$out" in *refused*) echo "$t REFUSED";; *) echo "$t OTHER: $out";; esac; fi; i=$((i+1)); done`,
			filepath.Join(stopDir, "stop"), ap.Addr(), ap.Port())
		return []string{"bash", "-c", script}
	}
	loops := func(name, app string, targets []string) *corev1.Pod {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: map[string]string{"app": app}},
			Spec:       corev1.PodSpec{NodeName: node.Name, RestartPolicy: corev1.RestartPolicyNever},
		}
		for i, target := range targets {
			c := corev1.Container{
				Name: fmt.Sprintf("loop%d", i), Image: agnhost,
				// The image table maps no host path; a shell (a host
				// program, as in agnhost's image) runs it.
				Command: []string{"sh", "-c", "exec " + self},
				Env:     []corev1.EnvVar{{Name: probeEnv, Value: target + "," + filepath.Join(stopDir, "stop")}},
			}
			if app == "egress" {
				c.Command, c.Env = bashLoop(target), nil
			}
			p.Spec.Containers = append(p.Spec.Containers, c)
		}
		return p
	}

	// The egress side's server, on the other node, not isolated.
	if err := createWhenServiceAccountExists(ctx, c, server("sink", "sink", other, "")); err != nil {
		t.Fatal(err)
	}
	sink := waitPodsReady(ctx, t, c, ns, "app=sink", 1)[0]
	// The address the target will have, one per family.
	var targetIPs []string
	var ingressTargets []string
	for _, p := range node.PodCIDRs {
		var addr netip.Addr
		if p.Addr().Is4() {
			a := p.Addr().As4()
			a[3] = byte(hostByte)
			addr = netip.AddrFrom4(a)
		} else {
			a := p.Addr().As16()
			a[15] = byte(hostByte)
			addr = netip.AddrFrom16(a)
		}
		targetIPs = append(targetIPs, addr.String())
		ingressTargets = append(ingressTargets, netip.AddrPortFrom(addr, 8080).String())
	}
	var egressTargets []string
	for _, ip := range sink.Status.PodIPs {
		egressTargets = append(egressTargets, netip.AddrPortFrom(netip.MustParseAddr(ip.IP), 8080).String())
	}

	// The prober first, then the target while the prober runs.
	if err := createWhenServiceAccountExists(ctx, c, loops("prober", "prober", ingressTargets)); err != nil {
		t.Fatal(err)
	}
	waitPodsRunningPhase(ctx, t, c, ns, "prober")
	// The loops run (a line from each) before the target exists.
	for i := range 2 {
		deadline := time.Now().Add(time.Minute)
		for {
			logs, err := cs.Pods(ns).GetLogs("prober", &corev1.PodLogOptions{Container: fmt.Sprintf("loop%d", i)}).DoRaw(ctx)
			if err == nil && len(logs) > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("prober loop%d printed nothing within 1m (%v)", i, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Attempts before this instant cannot reach the target (it does not
	// exist); what they meet (no route, a reject on the way) is not the
	// target's policy at work.
	targetCreated := time.Now()
	if err := createWhenServiceAccountExists(ctx, c, server("target", "target", node, strings.Join(targetIPs, ","))); err != nil {
		t.Fatal(err)
	}
	if err := createWhenServiceAccountExists(ctx, c, loops("egress", "egress", egressTargets)); err != nil {
		t.Fatal(err)
	}
	waitPodsReady(ctx, t, c, ns, "app=target", 1)
	waitPodsRunningPhase(ctx, t, c, ns, "egress")
	// Keep hammering a while after both are up, then stop the loops.
	time.Sleep(2 * time.Second)
	if err := os.WriteFile(filepath.Join(stopDir, "stop"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	counts := windowCounts{ingress: map[string]int{}, egress: map[string]int{}}
	before := map[string]int{}
	for pod, into := range map[string]map[string]int{"prober": counts.ingress, "egress": counts.egress} {
		waitPodsDone(ctx, t, c, ns, pod)
		for i := range 2 {
			logs, err := cs.Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: fmt.Sprintf("loop%d", i)}).DoRaw(ctx)
			if err != nil {
				t.Fatalf("logs of %s/%s: %v", ns, pod, err)
			}
			sc := bufio.NewScanner(strings.NewReader(string(logs)))
			for sc.Scan() {
				stamp, rest, _ := strings.Cut(sc.Text(), " ")
				outcome, _, _ := strings.Cut(rest, ":")
				ns, err := strconv.ParseInt(stamp, 10, 64)
				if err != nil {
					t.Fatalf("probe line %q: %v", sc.Text(), err)
				}
				family := []string{"v4", "v6"}[i]
				if pod == "prober" && time.Unix(0, ns).Before(targetCreated) {
					before[family+" "+outcome]++
					continue
				}
				into[family+" "+outcome]++
			}
		}
	}
	t.Logf("%s: ingress to %v %v (before the target pod was created: %v); egress to %v %v", mode, ingressTargets, counts.ingress, before, egressTargets, counts.egress)
	return counts
}

// waitPodsRunningPhase waits until pod name's containers run.
func waitPodsRunningPhase(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, name string) {
	t.Helper()
	waitPodPhase(ctx, t, c, ns, name, corev1.PodRunning, corev1.PodSucceeded, corev1.PodFailed)
}

// waitPodsDone waits until pod name's containers all exited.
func waitPodsDone(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, name string) {
	t.Helper()
	waitPodPhase(ctx, t, c, ns, name, corev1.PodSucceeded, corev1.PodFailed)
}

func waitPodPhase(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, name string, phases ...corev1.PodPhase) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		p, err := c.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err == nil && slices.Contains(phases, p.Status.Phase) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod %s/%s not in %v within 2m (err %v)", ns, name, phases, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pluginWait is the plugin's log line for one pod (podstart.cmdAdd).
var pluginWait = regexp.MustCompile(`^nftpol-cni: add pod (\S+) \[[^]]*\] in force after (\S+)$`)

// measurePodStartDelay starts n pods on node under a default-deny
// ingress policy and reports the wait the plugin added to each pod's
// CNI ADD, read from its log line in the node's plugin log.
func measurePodStartDelay(ctx context.Context, t *testing.T, c *cluster.Cluster, node *cluster.Node, n int) {
	t.Helper()
	ns := "podstart-delay"
	cs := c.Clientset.CoreV1()
	if _, err := cs.Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny-ingress"}, Spec: networkingv1.NetworkPolicySpec{
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if _, err := c.Clientset.NetworkingV1().NetworkPolicies(ns).Create(ctx, np, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%02d", i), Namespace: ns, Labels: map[string]string{"app": "delay"}},
			Spec: corev1.PodSpec{NodeName: node.Name, TerminationGracePeriodSeconds: ptr.To(int64(1)),
				Containers: []corev1.Container{{Name: "c", Image: agnhost, Args: []string{"pause"}}}},
		}
		if err := createWhenServiceAccountExists(ctx, c, p); err != nil {
			t.Fatal(err)
		}
		// One at a time: the delay of one pod start, not of a burst.
		waitPodsRunningPhase(ctx, t, c, ns, p.Name)
	}
	data, err := os.ReadFile(filepath.Join(c.Dir, "nodes", node.Name, "cni", "plugins.log"))
	if err != nil {
		t.Fatal(err)
	}
	var waits []time.Duration
	for _, line := range strings.Split(string(data), "\n") {
		m := pluginWait.FindStringSubmatch(line)
		if m == nil || !strings.HasPrefix(m[1], ns+"/") {
			continue
		}
		d, err := time.ParseDuration(m[2])
		if err != nil {
			t.Fatalf("plugin log line %q: %v", line, err)
		}
		waits = append(waits, d)
	}
	if len(waits) != n {
		t.Fatalf("%d plugin wait lines for %d pods in %s", len(waits), n, ns)
	}
	slices.Sort(waits)
	t.Logf("pod start delay added by the plugin over %d pods: p50 %s, p90 %s, max %s", n,
		waits[n/2].Round(10*time.Microsecond), waits[n*9/10].Round(10*time.Microsecond), waits[n-1].Round(10*time.Microsecond))
}
