package cluster_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/nftpol/nftpol/test/cluster"
	"github.com/nftpol/nftpol/test/netnskubelet"
)

// TestCompatibility checks, with packets, how the agent (installed from
// config/default) and kube-proxy in nftables mode work together, on the
// package's shared cluster: Services, NodePorts, hairpin, the node,
// hostNetwork pods, addresses reused. Each subtest is one statement of the
// README's compatibility notes; they build on each other's policies.
func TestCompatibility(t *testing.T) {
	runCompatibility(t, sharedCluster(t))
}

// TestCompatibilityIPTables runs the same statements with kube-proxy in
// iptables mode.
func TestCompatibilityIPTables(t *testing.T) {
	if _, err := exec.LookPath("iptables"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("kube-proxy's iptables mode needs the iptables commands (Debian package iptables)")
		}
		t.Skip("kube-proxy's iptables mode needs the iptables commands (Debian package iptables)")
	}
	runCompatibility(t, startClusterWith(t, cluster.Options{ProxyMode: "iptables"}))
}

// compatPods are the workloads the statements use, in namespace compat:
// a server on node 1 behind a dual-stack NodePort Service, two clients
// (one the policies allow, one not) on a node of the test's choice, and a
// hostNetwork pod on node 2 serving on its node's address.
type compatPods struct {
	server, client, other, hostPeer corev1.Pod
	clusterIPs                      []string
	nodePort                        int32
}

const compatNS = "compat"

func runCompatibility(t *testing.T, c *cluster.Cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	began := time.Now()
	w := startCompatPods(ctx, t, c, c.Nodes[1])
	t.Logf("workloads ready after %s", time.Since(began).Round(time.Millisecond))
	n1, n2 := c.Nodes[0].IPs[0].String(), c.Nodes[1].IPs[0].String()
	svc4 := "http://" + net.JoinHostPort(w.clusterIPs[0], "80") + "/hostname"
	svc6 := "http://" + net.JoinHostPort(w.clusterIPs[1], "80") + "/hostname"
	nodePort := "http://" + net.JoinHostPort(n1, strconv.Itoa(int(w.nodePort))) + "/hostname"
	serverPod := "http://" + net.JoinHostPort(w.server.Status.PodIP, "8080") + "/hostname"
	hostPeer := "http://" + net.JoinHostPort(n2, "8090") + "/hostname"
	api := "https://10.0.0.1/livez"

	step := func(name string, policies []*networkingv1.NetworkPolicy, cases []connCase) {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			for _, p := range policies {
				if _, err := c.Clientset.NetworkingV1().NetworkPolicies(compatNS).Create(ctx, p, metav1.CreateOptions{}); err != nil {
					t.Fatalf("creating policy %s: %v", p.Name, err)
				}
			}
			expectConns(ctx, t, c, cases)
			t.Logf("%s: %d connections as expected after %s", name, len(cases), time.Since(start).Round(time.Millisecond))
		})
	}

	// No policy: every path connects.
	step("baseline", nil, []connCase{
		{"client to the ClusterIP (IPv4)", w.client, svc4, true},
		{"client to the ClusterIP (IPv6)", w.client, svc6, true},
		{"other to the ClusterIP", w.other, svc4, true},
		{"client to a NodePort", w.client, nodePort, true},
		{"hostNetwork pod to a NodePort", w.hostPeer, nodePort, true},
		{"server to itself through its Service (hairpin)", w.server, svc4, true},
		{"client to the API server through the kubernetes Service", w.client, api, true},
	})
	// Ingress: the server admits app=client on TCP 8080, its target
	// port. Connections to port 80 of its Service pass: the agent judges
	// them after kube-proxy's DNAT, on the pod's address and port.
	// ClusterIP and NodePort judged on the client pod and the target port.
	step("ingress-after-dnat",
		[]*networkingv1.NetworkPolicy{ingressPolicy("server-from-client", "server", tcpPort(8080), podPeer("client"))},
		[]connCase{
			{"client to the ClusterIP (IPv4)", w.client, svc4, true},
			{"client to the ClusterIP (IPv6)", w.client, svc6, true},
			{"other to the ClusterIP", w.other, svc4, false},
			{"client to a NodePort of the server's node", w.client, nodePort, true},
			{"other to a NodePort of the server's node", w.other, nodePort, false},
			{"other to the server pod", w.other, serverPod, false},
			// hostNetwork pods have their node's address: no pod
			// selector matches them, only an ipBlock does.
			{"hostNetwork pod (another node's address) to the server pod", w.hostPeer, serverPod, false},
			{"hostNetwork pod to a NodePort", w.hostPeer, nodePort, false},
			// The hairpin connection leaves the server and comes back to
			// it: the agent sees it from the server's own address.
			{"server to itself through its Service (hairpin)", w.server, svc4, false},
		})
	// Kubelet probes come from the node and pass under ingress isolation.
	t.Run("kubelet-probes", func(t *testing.T) {
		// The server's readiness probe runs every second and fails at
		// the first failure, its liveness probe kills it at the third:
		// it is still ready, not restarted, after the isolation has been
		// in force (the step above saw denials) for 3 seconds.
		time.Sleep(3 * time.Second)
		p, err := c.Clientset.CoreV1().Pods(compatNS).Get(ctx, "server", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if restarts := p.Status.ContainerStatuses[0].RestartCount; !podReady(p) || restarts != w.server.Status.ContainerStatuses[0].RestartCount {
			t.Fatalf("server under an ingress policy: ready %v, restarts %d (%d before the policy); the kubelet's probes from the node were blocked", podReady(p), restarts, w.server.Status.ContainerStatuses[0].RestartCount)
		}
	})
	// The pod's own labels admit hairpin: the agent sees it from the
	// pod's address (kube-proxy masquerades it only after the forward
	// hook), not from the node, which stays denied.
	step("ingress-hairpin",
		[]*networkingv1.NetworkPolicy{ingressPolicy("server-from-itself", "server", tcpPort(8080), podPeer("server"))},
		[]connCase{
			{"server to itself through its Service (hairpin)", w.server, svc4, true},
			{"server to itself through its Service (hairpin, IPv6)", w.server, svc6, true},
			{"hostNetwork pod to the server pod", w.hostPeer, serverPod, false},
			{"other to the ClusterIP", w.other, svc4, false},
		})
	// The nodes' ipBlock admits hostNetwork peers.
	step("ingress-node-ipblock",
		[]*networkingv1.NetworkPolicy{ingressPolicy("server-from-nodes", "server", tcpPort(8080), networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}})},
		[]connCase{
			{"hostNetwork pod to the server pod", w.hostPeer, serverPod, true},
			{"hostNetwork pod to a NodePort", w.hostPeer, nodePort, true},
			{"other to the ClusterIP", w.other, svc4, false},
		})
	// Egress: the client may reach app=server on TCP 8080 only.
	// A Service is judged on its endpoint pods and target port; the node
	// and the API server are denied.
	step("egress-after-dnat",
		[]*networkingv1.NetworkPolicy{egressPolicy("client-to-server", "client", tcpPort(8080), podPeer("server"))},
		[]connCase{
			{"client to the ClusterIP (IPv4)", w.client, svc4, true},
			{"client to the ClusterIP (IPv6)", w.client, svc6, true},
			{"client to its own node's address (a hostNetwork pod)", w.client, hostPeer, false},
			{"client to the API server through the kubernetes Service", w.client, api, false},
			{"other (not isolated) to its own node's address", w.other, hostPeer, true},
		})
	// An ipBlock of the Service range does not allow a Service: the API
	// server needs its endpoint.
	step("egress-service-range",
		[]*networkingv1.NetworkPolicy{egressPolicy("client-to-services", "client", nil, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/24"}})},
		[]connCase{
			{"client to the API server through the kubernetes Service", w.client, api, false},
			{"client to the ClusterIP", w.client, svc4, true},
		})
	// The nodes' and control plane's ipBlock allows pod-to-node and the
	// API server.
	step("egress-node-and-apiserver",
		[]*networkingv1.NetworkPolicy{egressPolicy("client-to-nodes", "client", nil, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: "192.0.2.0/24"}})},
		[]connCase{
			{"client to its own node's address (a hostNetwork pod)", w.client, hostPeer, true},
			{"client to the API server through the kubernetes Service", w.client, api, true},
		})
	// A hostNetwork pod selected by a policy is not isolated.
	step("hostnetwork-subject",
		[]*networkingv1.NetworkPolicy{ingressPolicy("hostpeer-deny", "hostpeer", nil)},
		[]connCase{
			{"other to the hostNetwork pod", w.other, hostPeer, true},
			{"server to the hostNetwork pod (another node)", w.server, "http://" + net.JoinHostPort(n2, "8090") + "/hostname", true},
		})
	// A pod deleted and another created on its addresses: the new pod's
	// labels decide, not the old one's.
	t.Run("same-ip-recreated", func(t *testing.T) {
		start := time.Now()
		impostor := recreateOnSameIPs(ctx, t, c, w.client, "impostor", map[string]string{"app": "other"})
		expectConns(ctx, t, c, []connCase{
			{"a pod the policy does not allow, on the allowed client's addresses, to the ClusterIP", impostor, svc4, false},
			{"the same to the ClusterIP (IPv6)", impostor, svc6, false},
			{"the same to the server pod", impostor, serverPod, false},
		})
		// And the other way round: an allowed pod on the addresses of a
		// denied one is allowed.
		newClient := recreateOnSameIPs(ctx, t, c, w.other, "newclient", map[string]string{"app": "client"})
		expectConns(ctx, t, c, []connCase{
			{"an allowed pod on the denied pod's addresses to the ClusterIP", newClient, svc4, true},
			{"the same to the server pod (IPv6)", newClient, "http://" + net.JoinHostPort(w.server.Status.PodIPs[1].IP, "8080") + "/hostname", true},
		})
		t.Logf("same-ip-recreated: the new pods' labels in force after %s", time.Since(start).Round(time.Millisecond))
	})
	t.Logf("compatibility done after %s", time.Since(began).Round(time.Millisecond))
}

// connCase is one connection and whether it must connect.
type connCase struct {
	name string
	from corev1.Pod
	url  string
	pass bool
}

// expectConns waits (bounded) until every case connects or times out as
// it should, two rounds in a row (a rule still being committed cannot
// pass by luck); a round runs its connections in parallel, through
// kubectl-style exec of curl in the client pod.
func expectConns(ctx context.Context, t *testing.T, c *cluster.Cluster, cases []connCase) {
	t.Helper()
	wrong := map[string]string{}
	streak := 0
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 45*time.Second, true, func(ctx context.Context) (bool, error) {
		var mu sync.Mutex
		var wg sync.WaitGroup
		round := map[string]string{}
		for _, cc := range cases {
			wg.Go(func() {
				out, _, err := c.Exec(ctx, cc.from.Namespace, cc.from.Name, cc.from.Spec.Containers[0].Name, "curl", "-gksS", "--max-time", "1", cc.url)
				if (err == nil) != cc.pass {
					mu.Lock()
					round[cc.name] = fmt.Sprintf("%s → %s: want connected=%v, got %q, %v", cc.from.Name, cc.url, cc.pass, strings.TrimSpace(out), err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		wrong = round
		if len(round) > 0 {
			streak = 0
			return false, nil
		}
		streak++
		return streak == 2, nil
	})
	if err != nil {
		for _, cc := range cases {
			if msg, ok := wrong[cc.name]; ok {
				t.Errorf("%s: %s", cc.name, msg)
			}
		}
		t.Fatalf("connections not as expected within 45s: %v", err)
	}
}

func startCompatPods(ctx context.Context, t *testing.T, c *cluster.Cluster, clientNode *cluster.Node) compatPods {
	t.Helper()
	cs := c.Clientset
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: compatNS}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := func(name string, node *cluster.Node, args ...string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: compatNS, Labels: map[string]string{"app": name}},
			Spec: corev1.PodSpec{
				NodeName:                      node.Name,
				TerminationGracePeriodSeconds: ptr.To(int64(1)),
				Containers:                    []corev1.Container{{Name: "c", Image: agnhost, Args: args}},
			},
		}
	}
	server := pod("server", c.Nodes[0], "netexec", "--http-port=8080")
	server.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	server.Spec.Containers[0].ReadinessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)}},
		PeriodSeconds: 1, FailureThreshold: 1,
	}
	// Three failures in a row: the first probe may come before netexec
	// listens.
	server.Spec.Containers[0].LivenessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
		PeriodSeconds: 1, FailureThreshold: 3,
	}
	hostPeer := pod("hostpeer", c.Nodes[1], "netexec", "--http-port=8090", "--udp-port=8091")
	hostPeer.Spec.HostNetwork = true
	for _, p := range []*corev1.Pod{server, pod("client", clientNode, "pause"), pod("other", clientNode, "pause"), hostPeer} {
		if err := createWhenServiceAccountExists(ctx, c, p); err != nil {
			t.Fatal(err)
		}
	}
	svc, err := cs.CoreV1().Services(compatNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "server", Namespace: compatNS},
		Spec: corev1.ServiceSpec{
			Type:           corev1.ServiceTypeNodePort,
			IPFamilyPolicy: ptr.To(corev1.IPFamilyPolicyRequireDualStack),
			Selector:       map[string]string{"app": "server"},
			Ports:          []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var w compatPods
	for _, p := range waitPodsReady(ctx, t, c, compatNS, "", 4) {
		switch p.Name {
		case "server":
			w.server = p
		case "client":
			w.client = p
		case "other":
			w.other = p
		case "hostpeer":
			w.hostPeer = p
		}
	}
	w.clusterIPs, w.nodePort = svc.Spec.ClusterIPs, svc.Spec.Ports[0].NodePort
	waitEndpoints(ctx, t, c, compatNS, "server", 1)
	return w
}

func tcpPort(p int32) []networkingv1.NetworkPolicyPort {
	return []networkingv1.NetworkPolicyPort{{Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(intstr.FromInt32(p))}}
}

func podPeer(app string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}}}
}

// ingressPolicy isolates app=<app> for ingress and admits peers on ports;
// without peers it admits nothing.
func ingressPolicy(name, app string, ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
	p := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: compatNS},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if len(peers) > 0 {
		p.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}}
	}
	return p
}

// egressPolicy isolates app=<app> for egress and admits peers on ports.
func egressPolicy(name, app string, ports []networkingv1.NetworkPolicyPort, peers ...networkingv1.NetworkPolicyPeer) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: compatNS},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{To: peers, Ports: ports}},
		},
	}
}

// recreateOnSameIPs deletes old and creates a pod named name with labels
// on the same node and, once old is gone and its addresses are free, the
// same addresses; it returns the new pod once ready.
func recreateOnSameIPs(ctx context.Context, t *testing.T, c *cluster.Cluster, old corev1.Pod, name string, labels map[string]string) corev1.Pod {
	t.Helper()
	pods := c.Clientset.CoreV1().Pods(old.Namespace)
	if err := pods.Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		_, err := pods.Get(ctx, old.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("pod %s not gone: %v", old.Name, err)
	}
	var ips []string
	for _, ip := range old.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: old.Namespace, Labels: labels,
			Annotations: map[string]string{netnskubelet.PodIPsAnnotation: strings.Join(ips, ",")}},
		Spec: corev1.PodSpec{
			NodeName:                      old.Spec.NodeName,
			TerminationGracePeriodSeconds: ptr.To(int64(1)),
			Containers:                    []corev1.Container{{Name: "c", Image: agnhost, Args: []string{"pause"}}},
		},
	}
	if _, err := pods.Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var got *corev1.Pod
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err = pods.Get(ctx, name, metav1.GetOptions{})
		return err == nil && podReady(got), nil
	})
	if err != nil {
		t.Fatalf("pod %s not ready: %v", name, err)
	}
	if got.Status.PodIP != old.Status.PodIP || len(got.Status.PodIPs) != len(old.Status.PodIPs) || got.Status.PodIPs[1] != old.Status.PodIPs[1] {
		t.Fatalf("pod %s got addresses %v, want %v", name, got.Status.PodIPs, old.Status.PodIPs)
	}
	return *got
}
