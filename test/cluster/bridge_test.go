package cluster_test

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/test/cluster"
	"github.com/nftpol/nftpol/test/netnskubelet"
)

// TestBridgeCNI runs pods on the bridge plugin (one bridge per node) and
// checks same-node traffic, which the bridge forwards at layer 2: with
// br_netfilter's bridge-nf-call-ip(6)tables on, the default in every
// network namespace of a kernel with br_netfilter, it crosses the IP
// forward hook and the agent enforces policy on it; with them off in the
// node's namespace, what happens is measured below.
func TestBridgeCNI(t *testing.T) {
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("the kernel has no br_netfilter (no /proc/sys/net/bridge)")
		}
		t.Skip("the kernel has no br_netfilter (no /proc/sys/net/bridge)")
	}
	c := startClusterWith(t, cluster.Options{CNI: "bridge"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	n1 := c.Nodes[0]
	for _, k := range []string{"bridge-nf-call-iptables", "bridge-nf-call-ip6tables"} {
		data, err := os.ReadFile("/proc/sys/net/bridge/" + k)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("root namespace %s = %s (left alone)", k, strings.TrimSpace(string(data)))
	}
	w := startCompatPods(ctx, t, c, n1)
	svc := "http://" + net.JoinHostPort(w.clusterIPs[0], "80") + "/hostname"
	svc6 := "http://" + net.JoinHostPort(w.clusterIPs[1], "80") + "/hostname"
	serverPod := "http://" + net.JoinHostPort(w.server.Status.PodIP, "8080") + "/hostname"
	serverPod6 := "http://" + net.JoinHostPort(w.server.Status.PodIPs[1].IP, "8080") + "/hostname"
	serverFromHostPeer := connCase{"hostNetwork pod on node 2 to the server pod (routed)", w.hostPeer, serverPod, false}
	began := time.Now()
	if _, err := c.Clientset.NetworkingV1().NetworkPolicies(compatNS).Create(ctx, ingressPolicy("server-from-client", "server", tcpPort(8080), podPeer("client")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Run("br-netfilter-on", func(t *testing.T) {
		// Same-node pod-to-pod traffic is policed, IPv4 and IPv6, and
		// Services work.
		expectConns(ctx, t, c, []connCase{
			{"client to the server pod (same node)", w.client, serverPod, true},
			{"client to the server pod (same node, IPv6)", w.client, serverPod6, true},
			{"other to the server pod (same node)", w.other, serverPod, false},
			{"other to the server pod (same node, IPv6)", w.other, serverPod6, false},
			{"client to the ClusterIP (same node)", w.client, svc, true},
			{"client to the ClusterIP (same node, IPv6)", w.client, svc6, true},
			{"other to the ClusterIP (same node)", w.other, svc, false},
			serverFromHostPeer,
		})
		t.Logf("same-node policy enforced on the bridge after %s", time.Since(began).Round(time.Millisecond))
	})
	t.Run("br-netfilter-off", func(t *testing.T) {
		// Off in node 1's namespace only: same-node pod-to-pod traffic
		// stays on the bridge and is not policed; same-node Service
		// connections fail for every client, allowed or not (the reply
		// goes back over the bridge without reaching conntrack to be
		// translated back), which is why kube-proxy needs it on; routed
		// traffic from another node is policed either way.
		for _, k := range []string{"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables"} {
			if err := netnskubelet.SetSysctlIn(n1.Netns, k, "0"); err != nil {
				t.Fatal(err)
			}
		}
		expectConns(ctx, t, c, []connCase{
			{"client to the server pod (same node)", w.client, serverPod, true},
			{"other to the server pod (same node): not policed", w.other, serverPod, true},
			{"other to the server pod (same node, IPv6): not policed", w.other, serverPod6, true},
			{"client to the ClusterIP (same node): broken", w.client, svc, false},
			{"client to the ClusterIP (same node, IPv6): broken", w.client, svc6, false},
			serverFromHostPeer,
		})
	})
}
