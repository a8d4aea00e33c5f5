package cluster_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/utils/ptr"

	"github.com/go-logr/logr/funcr"

	"github.com/nftpol/nftpol/test/cluster"
	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/netnskubelet"
)

const agnhost = "registry.k8s.io/e2e-test-images/agnhost:2.53"

// prefix names the test cluster's namespaces. NFTPOL_TEST_CLUSTER_PREFIX
// overrides it (at most 6 characters, so interface names fit) so that two
// checkouts can run this package's tests on one machine at once.
var prefix = testPrefix()

func testPrefix() string {
	if p := os.Getenv("NFTPOL_TEST_CLUSTER_PREFIX"); p != "" {
		return p
	}
	return "nftclt"
}

// shared is the package's default cluster (nftables kube-proxy, ptp, the
// agent from config/default), started by the first test that needs it and
// stopped by TestMain: tests on it use namespaces of their own.
var shared = struct {
	once *sync.Once
	c    *cluster.Cluster
	err  error
	took time.Duration
}{once: new(sync.Once)}

// stopShared stops the shared cluster, if running; the next test that
// needs it starts it again.
func stopShared() {
	if shared.c != nil {
		shared.c.Stop()
	}
	shared.c, shared.err, shared.once = nil, nil, new(sync.Once)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.c != nil {
		stopShared()
		if left := leftovers(); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "namespaces left after Stop: %v\n", left)
			code = 1
		}
	}
	os.Exit(code)
}

// sharedCluster returns the shared cluster, starting it on first use; its
// log goes to standard error, since it outlives the test that started it.
// A failing test prints the end of every component's log.
func sharedCluster(t *testing.T) *cluster.Cluster {
	t.Helper()
	assets := requireCluster(t)
	shared.once.Do(func() {
		start := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
		defer cancel()
		shared.c, shared.err = cluster.Start(ctx, cluster.Options{
			Prefix: prefix, Nodes: 2, Assets: assets,
			Log: funcr.New(func(p, args string) { fmt.Fprintln(os.Stderr, "cluster:", p, args) }, funcr.Options{}),
		})
		shared.took = time.Since(start)
	})
	if shared.err != nil {
		t.Fatalf("starting the shared cluster: %v", shared.err)
	}
	t.Logf("shared cluster (started in %s)", shared.took.Round(time.Millisecond))
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(shared.c.Logs(4000))
		}
	})
	return shared.c
}

// requireCluster skips the test, or fails it under CI=true, when a cluster
// cannot start here.
func requireCluster(t *testing.T) cluster.Assets {
	t.Helper()
	kerneltest.Require(t, kerneltest.ControlPlane, kerneltest.NftBinary)
	assets := cluster.AssetsFromEnv()
	if reason := assets.Missing(true); reason != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot run under CI=true: %s", reason)
		}
		t.Skip(reason)
	}
	return assets
}

// startClusterWith starts a 2-node cluster of the test's own with opts
// (prefix, nodes, assets and log filled in); it is stopped, with every
// namespace removed, when the test ends, and its logs are printed if the
// test failed. The shared cluster, if running, is stopped first: two
// clusters of one prefix cannot run at once.
func startClusterWith(t *testing.T, opts cluster.Options) *cluster.Cluster {
	t.Helper()
	assets := requireCluster(t)
	stopShared()
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	opts.Prefix, opts.Nodes, opts.Assets = prefix, 2, assets
	opts.Log = funcr.New(func(p, args string) { t.Log(p, args) }, funcr.Options{})
	c, err := cluster.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(c.Logs(4000))
		}
		c.Stop()
		if left := leftovers(); len(left) > 0 {
			t.Errorf("namespaces left after Stop: %v", left)
		}
	})
	t.Logf("cluster started in %s", time.Since(start).Round(time.Millisecond))
	return c
}

func leftovers() []string {
	var out []string
	entries, _ := os.ReadDir(netnskubelet.NetnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// TestServicesAndPolicyOnARealCluster runs the path a user's traffic takes
// in a cluster: a Deployment scheduled over both nodes, a ClusterIP
// Service through kube-proxy, kubectl-style exec through the API server
// and the kubelet, then a NetworkPolicy enforced by the agent.
func TestServicesAndPolicyOnARealCluster(t *testing.T) {
	c := sharedCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cs := c.Clientset
	began := time.Now()
	// Pod namespaces of other tests on the shared cluster.
	before := len(podNamespaces())
	checkNodes(ctx, t, c)
	checkAgents(ctx, t, c)

	for _, ns := range []string{"web", "client"} {
		if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating namespace %s: %v", ns, err)
		}
	}

	// Four netexec replicas spread over both nodes.
	labels := map[string]string{"app": "netexec"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "netexec", Namespace: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(4)),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: "kubernetes.io/hostname",
						WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector:     &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{
						Name: "netexec", Image: agnhost,
						Args:  []string{"netexec", "--http-port=8080"},
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
							PeriodSeconds: 1,
						},
					}},
				},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("web").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the deployment: %v", err)
	}
	// One client per node, through the DaemonSet controller.
	clientLabels := map[string]string{"app": "client"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "client", Namespace: "client"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: clientLabels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: clientLabels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{Name: "client", Image: agnhost, Args: []string{"pause"}}},
				},
			},
		},
	}
	if _, err := cs.AppsV1().DaemonSets("client").Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the client daemonset: %v", err)
	}
	// A hostNetwork pod runs in its node's namespace, with the node's
	// address and hostname.
	hostPod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "host", Namespace: "client", Labels: map[string]string{"app": "host"}},
		Spec: corev1.PodSpec{
			HostNetwork:  true,
			NodeSelector: map[string]string{"kubernetes.io/hostname": c.Nodes[1].Name},
			Containers: []corev1.Container{{
				Name: "netexec", Image: agnhost, Args: []string{"netexec", "--http-port=8090", "--udp-port=8091"},
				Env: []corev1.EnvVar{{Name: "MY_POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}}},
			}},
		},
	}
	if err := createWhenServiceAccountExists(ctx, c, hostPod); err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services("web").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "netexec", Namespace: "web"},
		Spec: corev1.ServiceSpec{
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyRequireDualStack),
			Selector:       labels,
			Ports:          []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the service: %v", err)
	}

	backends := waitPodsReady(ctx, t, c, "web", "app=netexec", 4)
	clients := waitPodsReady(ctx, t, c, "client", "app=client", len(c.Nodes))
	nodesOf := map[string]string{} // backend pod name → node
	for _, p := range backends {
		nodesOf[p.Name] = p.Spec.NodeName
		checkPodAddress(t, c, p)
	}
	for _, p := range clients {
		checkPodAddress(t, c, p)
	}
	waitEndpoints(ctx, t, c, "web", "netexec", 4)
	t.Logf("4 backends and %d clients ready after %s", len(clients), time.Since(began).Round(time.Millisecond))
	lifecycle := startLifecyclePods(ctx, t, c)
	volumesPod, volumesDir := startVolumesPod(ctx, t, c, "client")

	// Exec reaches the container: its own hostname (a UTS namespace per
	// pod), and a failing command's exit code comes back.
	for _, p := range clients {
		out, _, err := c.Exec(ctx, p.Namespace, p.Name, "client", "hostname")
		if err != nil {
			t.Fatal(err)
		}
		if strings.TrimSpace(out) != p.Name {
			t.Fatalf("exec hostname in %s printed %q", p.Name, out)
		}
	}
	if _, _, err := c.Exec(ctx, clients[0].Namespace, clients[0].Name, "client", "sh", "-c", "exit 3"); err == nil || !strings.Contains(err.Error(), "exit code 3") {
		t.Fatalf("exec of a command exiting 3: got %v, want an error with exit code 3", err)
	}
	if out := execTTY(ctx, t, c, clients[0], "tty"); !strings.HasPrefix(out, "/dev/pts/") {
		t.Fatalf("exec with a TTY: tty printed %q", out)
	}
	// The hostNetwork pod has its node's address and name, and its
	// environment the downward API's values; a client reaches it.
	host := waitPodsReady(ctx, t, c, "client", "app=host", 1)[0]
	if host.Status.PodIP != c.Nodes[1].IPs[0].String() || len(host.Status.PodIPs) != 2 || host.Status.PodIPs[1].IP != c.Nodes[1].IPs[1].String() {
		t.Fatalf("hostNetwork pod IPs %v, want the node's %v", host.Status.PodIPs, c.Nodes[1].IPs)
	}
	out, _, err := c.Exec(ctx, "client", "host", "netexec", "sh", "-c", "hostname; echo $MY_POD_IP")
	if err != nil {
		t.Fatal(err)
	}
	if want := c.Nodes[1].Name + "\n" + c.Nodes[1].IPs[0].String() + "\n"; out != want {
		t.Fatalf("hostname and MY_POD_IP in the hostNetwork pod: %q, want %q", out, want)
	}
	out, _, err = c.Exec(ctx, clients[0].Namespace, clients[0].Name, "client", "curl", "-gsS", "--max-time", "2", "http://"+host.Status.PodIP+":8090/hostname")
	if err != nil || strings.TrimSpace(out) != c.Nodes[1].Name {
		t.Fatalf("a client reaching the hostNetwork pod: %q, %v", out, err)
	}

	// The Service from every node's client reaches backends on both
	// nodes, by the pod names the backends answer with. Requests may fail
	// until kube-proxy has the endpoints the API server already lists
	// (its rules reject a service without any), so they retry, bounded.
	if len(svc.Spec.ClusterIPs) != 2 {
		t.Fatalf("dual-stack service got cluster IPs %v", svc.Spec.ClusterIPs)
	}
	var urls []string
	for _, ip := range svc.Spec.ClusterIPs {
		urls = append(urls, "http://"+net.JoinHostPort(ip, "80")+"/hostname")
	}
	for _, url := range urls {
		for _, p := range clients {
			seen := map[string]bool{}
			var last string
			for i := 0; i < 60 && len(seen) < len(c.Nodes); i++ {
				out, _, err := c.Exec(ctx, p.Namespace, p.Name, "client", "curl", "-gsS", "--max-time", "2", url)
				if err != nil {
					last = err.Error()
					time.Sleep(250 * time.Millisecond)
					continue
				}
				node, ok := nodesOf[strings.TrimSpace(out)]
				if !ok {
					t.Fatalf("from %s: %s answered %q, not a backend's name", p.Name, url, out)
				}
				seen[node] = true
			}
			if len(seen) < len(c.Nodes) {
				t.Fatalf("from %s: 60 requests to %s reached backends on %v only (last error: %s)", p.Name, url, seen, last)
			}
		}
	}
	checkLifecyclePods(ctx, t, c, lifecycle)
	checkVolumesPod(ctx, t, c, "client", volumesPod, volumesDir)
	t.Logf("service reached backends on every node from every node after %s", time.Since(began).Round(time.Millisecond))

	// Deny all ingress to the backends: the agent must make every request
	// time out. Then allow the client namespace again: requests pass,
	// so the denial was the policy's doing.
	denyAll := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-all", Namespace: "web"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if _, err := cs.NetworkingV1().NetworkPolicies("web").Create(ctx, denyAll, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the deny policy: %v", err)
	}
	waitAllClients(ctx, t, c, clients, urls, false)
	t.Logf("deny-all enforced after %s", time.Since(began).Round(time.Millisecond))
	allowClients := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "allow-client", Namespace: "web"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "client"}},
				}},
			}},
		},
	}
	if _, err := cs.NetworkingV1().NetworkPolicies("web").Create(ctx, allowClients, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the allow policy: %v", err)
	}
	waitAllClients(ctx, t, c, clients, urls, true)
	t.Logf("allow-client enforced after %s", time.Since(began).Round(time.Millisecond))

	checkAgentRBAC(ctx, t, c, "web")

	// Deleting the namespaces stops every pod: the kubelets remove their
	// network namespaces and the pod objects go.
	for _, ns := range []string{"web", "client"} {
		if err := cs.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("deleting namespace %s: %v", ns, err)
		}
	}
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		for _, ns := range []string{"web", "client"} {
			if _, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				return false, nil
			}
		}
		return len(podNamespaces()) == before, nil
	})
	if err != nil {
		t.Fatalf("namespaces not gone after 2 minutes (pod network namespaces: %v, %d before the test)", podNamespaces(), before)
	}
	t.Logf("everything removed after %s", time.Since(began).Round(time.Millisecond))
}

// podNamespaces lists the pod network namespaces the kubelets still hold.
func podNamespaces() []string {
	var out []string
	for _, n := range leftovers() {
		if strings.HasPrefix(n, prefix+"-p") {
			out = append(out, n)
		}
	}
	return out
}

// createWhenServiceAccountExists creates a pod once the namespace's
// default ServiceAccount exists: the ServiceAccount admission plugin
// rejects pods before the controller-manager has created it.
func createWhenServiceAccountExists(ctx context.Context, c *cluster.Cluster, pod *corev1.Pod) error {
	var last error
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, last = c.Clientset.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		return last == nil, nil
	})
	if err != nil {
		return fmt.Errorf("creating pod %s/%s: %w (last: %v)", pod.Namespace, pod.Name, err, last)
	}
	return nil
}

func waitPodsReady(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, selector string, want int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	var last string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := c.Clientset.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		pods = nil
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && podReady(&p) && p.DeletionTimestamp == nil {
				pods = append(pods, p)
			} else {
				last = fmt.Sprintf("pod %s: phase %s, containers %+v", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
			}
		}
		return len(pods) == want, nil
	})
	if err != nil {
		t.Fatalf("%d ready pods %s in %s: %v; have %d (last: %s)", want, selector, ns, err, len(pods), last)
	}
	return pods
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// checkPodAddress checks the status the kubelet wrote: a pod IP of each
// family from its node's pod CIDRs, the node's InternalIPs as host IPs.
func checkPodAddress(t *testing.T, c *cluster.Cluster, p corev1.Pod) {
	t.Helper()
	for _, n := range c.Nodes {
		if n.Name != p.Spec.NodeName {
			continue
		}
		if len(p.Status.HostIPs) != 2 || p.Status.HostIPs[0].IP != n.IPs[0].String() || p.Status.HostIPs[1].IP != n.IPs[1].String() {
			t.Errorf("pod %s: hostIPs %v, want %v", p.Name, p.Status.HostIPs, n.IPs)
		}
		if len(p.Status.PodIPs) != 2 || p.Status.PodIP != p.Status.PodIPs[0].IP {
			t.Errorf("pod %s: podIP %s, podIPs %v: want one per family, IPv4 first", p.Name, p.Status.PodIP, p.Status.PodIPs)
			return
		}
		for f, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err != nil || !n.PodCIDRs[f].Contains(a) {
				t.Errorf("pod %s: podIP %q outside its node's %s", p.Name, ip.IP, n.PodCIDRs[f])
			}
		}
		return
	}
	t.Errorf("pod %s is bound to unknown node %q", p.Name, p.Spec.NodeName)
}

// waitEndpoints waits until the service's EndpointSlices list want ready
// endpoints in each family.
func waitEndpoints(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, svc string, want int) {
	t.Helper()
	var ready map[discoveryv1.AddressType]int
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		slices, err := c.Clientset.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + svc})
		if err != nil {
			return false, nil
		}
		ready = map[discoveryv1.AddressType]int{}
		for _, s := range slices.Items {
			for _, e := range s.Endpoints {
				if e.Conditions.Ready != nil && *e.Conditions.Ready {
					ready[s.AddressType]++
				}
			}
		}
		return ready[discoveryv1.AddressTypeIPv4] == want && ready[discoveryv1.AddressTypeIPv6] == want, nil
	})
	if err != nil {
		t.Fatalf("service %s/%s: want %d ready endpoints per family, have %v: %v", ns, svc, want, ready, err)
	}
}

// waitAllClients waits (bounded) until a request from every client to
// every url succeeds (pass) or times out (!pass), three rounds in a row,
// so a rule still being committed cannot pass the check by luck. The
// requests of a round run in parallel.
func waitAllClients(ctx context.Context, t *testing.T, c *cluster.Cluster, clients []corev1.Pod, urls []string, pass bool) {
	t.Helper()
	var last string
	streak := 0
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		ok := true
		for _, p := range clients {
			for _, url := range urls {
				wg.Go(func() {
					out, _, err := c.Exec(ctx, p.Namespace, p.Name, "client", "curl", "-gsS", "--max-time", "1", url)
					if (err == nil) != pass {
						mu.Lock()
						ok, last = false, fmt.Sprintf("from %s to %s: %q, %v", p.Name, url, out, err)
						mu.Unlock()
					}
				})
			}
		}
		wg.Wait()
		if !ok {
			streak = 0
			return false, nil
		}
		streak++
		return streak == 3, nil
	})
	if err != nil {
		t.Fatalf("requests from every client to %v never %s three rounds in a row: %v (last: %s)", urls, map[bool]string{true: "passed", false: "failed"}[pass], err, last)
	}
}

// checkNodes checks what the kubelets registered: the InternalIP on the
// shared link, the endpoint the API server dials, the pod CIDR and a
// renewed lease.
func checkNodes(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	for _, n := range c.Nodes {
		node, err := c.Clientset.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		want := []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.IPs[0].String()},
			{Type: corev1.NodeInternalIP, Address: n.IPs[1].String()},
			{Type: corev1.NodeHostName, Address: n.Name},
			{Type: corev1.NodeInternalDNS, Address: "127.0.0.1"},
		}
		if !slices.Equal(node.Status.Addresses, want) {
			t.Errorf("node %s addresses %v, want %v", n.Name, node.Status.Addresses, want)
		}
		if node.Status.DaemonEndpoints.KubeletEndpoint.Port == 0 || !slices.Equal(node.Spec.PodCIDRs, []string{n.PodCIDRs[0].String(), n.PodCIDRs[1].String()}) {
			t.Errorf("node %s: kubelet port %d, pod CIDRs %q", n.Name, node.Status.DaemonEndpoints.KubeletEndpoint.Port, node.Spec.PodCIDRs)
		}
		lease, err := c.Clientset.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("node %s lease: %v", n.Name, err)
		}
		if lease.Spec.RenewTime == nil || time.Since(lease.Spec.RenewTime.Time) > time.Minute {
			t.Errorf("node %s lease not renewed: %v", n.Name, lease.Spec.RenewTime)
		}
	}
}

// execTTY runs a command with a TTY, as kubectl exec -it does, and
// returns what it printed.
func execTTY(ctx context.Context, t *testing.T, c *cluster.Cluster, p corev1.Pod, command ...string) string {
	t.Helper()
	req := c.Clientset.CoreV1().RESTClient().Post().
		Resource("pods").Namespace(p.Namespace).Name(p.Name).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{Container: p.Spec.Containers[0].Name, Command: command, Stdout: true, TTY: true}, scheme.ParameterCodec)
	ex, err := remotecommand.NewSPDYExecutor(c.Config, "POST", req.URL())
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &out, Tty: true}); err != nil {
		t.Fatalf("exec %v with a TTY in %s: %v", command, p.Name, err)
	}
	return strings.TrimSpace(out.String())
}

// startLifecyclePods creates pods whose containers end: one that fails
// and must be restarted (after an init container that succeeds), one that
// succeeds and must end the pod; and one that ignores SIGTERM.
func startLifecyclePods(ctx context.Context, t *testing.T, c *cluster.Cluster) []string {
	t.Helper()
	sh := func(name, script string) corev1.Container {
		return corev1.Container{Name: name, Image: agnhost, Command: []string{"sh", "-c", script}}
	}
	pods := []*corev1.Pod{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "crashing", Namespace: "client"},
			Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{sh("init", "exit 0")},
				Containers:     []corev1.Container{sh("crash", "exit 7")},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "job", Namespace: "client"},
			Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{sh("work", "exit 0")},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "stubborn", Namespace: "client"},
			Spec: corev1.PodSpec{
				Containers: []corev1.Container{sh("stubborn", "trap '' TERM; while true; do sleep 0.2; done")},
			},
		},
	}
	var names []string
	for _, p := range pods {
		if _, err := c.Clientset.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating pod %s: %v", p.Name, err)
		}
		names = append(names, p.Name)
	}
	return names
}

// checkLifecyclePods waits (bounded) for what the kubelet must report:
// the crashing container restarted with its exit code as last state, the
// pod that ran to completion Succeeded.
func checkLifecyclePods(ctx context.Context, t *testing.T, c *cluster.Cluster, names []string) {
	t.Helper()
	var last string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		crashing, err := c.Clientset.CoreV1().Pods("client").Get(ctx, names[0], metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		job, err := c.Clientset.CoreV1().Pods("client").Get(ctx, names[1], metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = fmt.Sprintf("crashing: %s %+v %+v; job: %s", crashing.Status.Phase, crashing.Status.InitContainerStatuses, crashing.Status.ContainerStatuses, job.Status.Phase)
		if len(crashing.Status.ContainerStatuses) != 1 || len(crashing.Status.InitContainerStatuses) != 1 {
			return false, nil
		}
		cs, init := crashing.Status.ContainerStatuses[0], crashing.Status.InitContainerStatuses[0]
		restarted := cs.RestartCount >= 1 && cs.LastTerminationState.Terminated != nil && cs.LastTerminationState.Terminated.ExitCode == 7
		initDone := init.State.Terminated != nil && init.State.Terminated.ExitCode == 0
		return restarted && initDone && crashing.Status.Phase == corev1.PodRunning && job.Status.Phase == corev1.PodSucceeded, nil
	})
	if err != nil {
		t.Fatalf("container restarts and completion not reported: %v (last: %s)", err, last)
	}
	// And the kubelet told `kubectl describe` about it.
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		events, err := c.Clientset.CoreV1().Events("client").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + names[0]})
		if err != nil {
			return false, nil
		}
		reasons := map[string]bool{}
		for _, e := range events.Items {
			if e.Source.Component == "kubelet" {
				reasons[e.Reason] = true
			}
		}
		last = fmt.Sprint(reasons)
		return reasons["Started"] && reasons["BackOff"], nil
	})
	if err != nil {
		t.Fatalf("kubelet events Started and BackOff for the crashing pod: %v (have %s)", err, last)
	}

	// A pod ignoring SIGTERM is killed when its grace period ends, and
	// only then does its object go.
	waitPodsRunning(ctx, t, c, "client", names[2])
	deleted := time.Now()
	if err := c.Clientset.CoreV1().Pods("client").Delete(ctx, names[2], metav1.DeleteOptions{GracePeriodSeconds: ptr.To(int64(2))}); err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		_, err := c.Clientset.CoreV1().Pods("client").Get(ctx, names[2], metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if took := time.Since(deleted); err != nil || took < 2*time.Second {
		t.Fatalf("pod ignoring SIGTERM with a 2s grace period gone after %s: %v", took, err)
	}
}

func waitPodsRunning(ctx context.Context, t *testing.T, c *cluster.Cluster, ns, name string) {
	t.Helper()
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		p, err := c.Clientset.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, nil
	})
	if err != nil {
		t.Fatalf("pod %s/%s not running: %v", ns, name, err)
	}
}
