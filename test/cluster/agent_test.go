package cluster_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/nftpol/nftpol/test/cluster"
)

const (
	saDir       = "/var/run/secrets/kubernetes.io/serviceaccount"
	agentLabels = "app.kubernetes.io/name=nftpol"
)

// checkAgents checks the agent as config/default installs it: the
// DaemonSet's one ready pod per node, each a hostNetwork pod with its
// node's address, made ready by the kubelet's readiness probe; the
// container's environment from the downward API and the kubelet
// (KUBERNETES_SERVICE_*), the ServiceAccount token volume at its usual
// path, the token authenticating as the nftpol ServiceAccount, the only
// capability NET_ADMIN and a read-only root; and the agent's connection to
// the API server going to the `kubernetes` Service's ClusterIP, which
// kube-proxy translates to the control plane's address.
func checkAgents(ctx context.Context, t *testing.T, c *cluster.Cluster) []corev1.Pod {
	t.Helper()
	ds, err := c.Clientset.AppsV1().DaemonSets(cluster.AgentNamespace).Get(ctx, cluster.AgentDaemonSet, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if s := ds.Status; s.DesiredNumberScheduled != int32(len(c.Nodes)) || s.NumberReady != s.DesiredNumberScheduled || s.NumberAvailable != s.DesiredNumberScheduled {
		t.Fatalf("agent DaemonSet status %+v, want %d ready and available", s, len(c.Nodes))
	}
	pods := waitPodsReady(ctx, t, c, cluster.AgentNamespace, agentLabels, len(c.Nodes))
	svc, err := c.Clientset.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	onNode := map[string]bool{}
	for _, p := range pods {
		n := nodeNamed(t, c, p.Spec.NodeName)
		onNode[n.Name] = true
		if !p.Spec.HostNetwork || p.Status.PodIP != n.IPs[0].String() {
			t.Errorf("agent pod %s: hostNetwork %v, pod IP %s, want the node's %s", p.Name, p.Spec.HostNetwork, p.Status.PodIP, n.IPs[0])
		}
		if cs := p.Status.ContainerStatuses; len(cs) != 1 || !cs[0].Ready || cs[0].RestartCount != 0 {
			t.Errorf("agent pod %s: container statuses %+v, want one ready, never restarted", p.Name, cs)
		}
		env, _, err := c.Exec(ctx, p.Namespace, p.Name, "nftpol", "sh", "-c",
			`echo "$NODE_NAME $NFTPOL_MEMORY_LIMIT $KUBERNETES_SERVICE_HOST $KUBERNETES_SERVICE_PORT"; cat `+saDir+`/namespace; echo; head -c 27 `+saDir+`/ca.crt; echo; grep -E '^Cap(Bnd|Eff)' /proc/self/status; touch /nftpol-write-test 2>&1 || true`)
		if err != nil {
			t.Fatal(err)
		}
		// NFTPOL_MEMORY_LIMIT is the container's memory limit in bytes
		// (downward API).
		limit := p.Spec.Containers[0].Resources.Limits.Memory().Value()
		want := fmt.Sprintf("%s %d %s 443\n%s\n-----BEGIN CERTIFICATE-----\nCapEff:\t0000000000001000\nCapBnd:\t0000000000001000\ntouch: cannot touch '/nftpol-write-test': Read-only file system\n",
			n.Name, limit, svc.Spec.ClusterIP, cluster.AgentNamespace)
		if env != want {
			t.Errorf("agent pod %s: environment, token volume and privileges:\n%s\nwant:\n%s", p.Name, env, want)
		}
		// The token is the pod's own, bound to it, for the ServiceAccount.
		token, _, err := c.Exec(ctx, p.Namespace, p.Name, "nftpol", "cat", saDir+"/token")
		if err != nil {
			t.Fatal(err)
		}
		if life := tokenLifetime(t, token); life < 24*time.Hour {
			t.Errorf("agent pod %s: token valid for %s; the kubelet never refreshes it, so it relies on the API server extending the admission plugin's one-hour tokens", p.Name, life)
		}
		review, err := c.Clientset.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if u := review.Status.User; !review.Status.Authenticated || u.Username != "system:serviceaccount:nftpol-system:nftpol" || !slices.Equal(u.Extra["authentication.kubernetes.io/pod-name"], []string{p.Name}) {
			t.Errorf("agent pod %s: its token authenticates %v as %+v, want the nftpol ServiceAccount bound to the pod", p.Name, review.Status.Authenticated, u)
		}
		// Its connection to the API server, as the node's kernel holds
		// it: to the ClusterIP of the kubernetes Service, port 443.
		tcp, _, err := c.Exec(ctx, p.Namespace, p.Name, "nftpol", "cat", "/proc/net/tcp")
		if err != nil {
			t.Fatal(err)
		}
		if remote := hexAddrPort(svc.Spec.ClusterIP, 443); !established(tcp, remote) {
			t.Errorf("agent pod %s: no established connection to %s:443 in\n%s", p.Name, svc.Spec.ClusterIP, tcp)
		}
	}
	if len(onNode) != len(c.Nodes) {
		t.Errorf("agent pods on nodes %v, want one on each of %d", onNode, len(c.Nodes))
	}
	// The API server advertises the control plane's address on the shared
	// link as the kubernetes Service's endpoint.
	slice, err := c.Clientset.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(slice.Endpoints) != 1 || !slices.Equal(slice.Endpoints[0].Addresses, []string{"192.0.2.254"}) {
		t.Errorf("kubernetes EndpointSlice endpoints %+v, want 192.0.2.254", slice.Endpoints)
	}
	return pods
}

func nodeNamed(t *testing.T, c *cluster.Cluster, name string) *cluster.Node {
	t.Helper()
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	t.Fatalf("no node %q", name)
	return nil
}

// hexAddrPort is an IPv4 address and port as /proc/net/tcp prints them.
func hexAddrPort(ip string, port int) string {
	a := netip.MustParseAddr(ip).As4()
	return fmt.Sprintf("%02X%02X%02X%02X:%04X", a[3], a[2], a[1], a[0], port)
}

// established reports whether /proc/net/tcp lists an established
// connection to remote.
func established(procNetTCP, remote string) bool {
	for _, line := range strings.Split(procNetTCP, "\n") {
		f := strings.Fields(line)
		if len(f) > 3 && f[2] == remote && f[3] == "01" {
			return true
		}
	}
	return false
}

// checkAgentRBAC checks that the agent runs with exactly what config/rbac
// grants it. What it uses works through its own token: it writes an Event
// (events.k8s.io) on a policy it cannot fully enforce. And what the role
// lacks fails: with networkpolicies taken out of the ClusterRole, a
// restarted agent is refused its list (its log says forbidden) and never
// turns ready; applying config/default again restores the role and the
// agent turns ready.
func checkAgentRBAC(ctx context.Context, t *testing.T, c *cluster.Cluster, ns string) {
	t.Helper()
	began := time.Now()
	policy := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "named-port-nobody-has", Namespace: ns},
		Spec: networkingv1.NetworkPolicySpec{
			// The namespace's pods define no port of that name: the rule
			// matches nothing and the agents say so.
			PodSelector: metav1.LabelSelector{},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				Ports: []networkingv1.NetworkPolicyPort{{Port: ptrTo(intstr.FromString("no-such-port"))}},
			}},
		},
	}
	if _, err := c.Clientset.NetworkingV1().NetworkPolicies(ns).Create(ctx, policy, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		evs, err := c.Clientset.EventsV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "regarding.name=" + policy.Name})
		if err != nil {
			return false, nil
		}
		for _, e := range evs.Items {
			if e.Reason == "PartlyUnenforceable" && e.ReportingController == "nftpol" {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no PartlyUnenforceable Event from the agents on policy %s/%s: %v", ns, policy.Name, err)
	}

	role, err := c.Clientset.RbacV1().ClusterRoles().Get(ctx, "nftpol", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var kept []rbacv1.PolicyRule
	for _, r := range role.Rules {
		if !slices.Contains(r.Resources, "networkpolicies") {
			kept = append(kept, r)
		}
	}
	if len(kept) == len(role.Rules) {
		t.Fatalf("ClusterRole nftpol has no networkpolicies rule: %+v", role.Rules)
	}
	role.Rules = kept
	if _, err := c.Clientset.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The authorizer learns of the change through an informer: the new
	// agent must start after it, so wait until the ServiceAccount is
	// refused.
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		allowed, err := canListPolicies(ctx, c)
		return err == nil && !allowed, nil
	})
	if err != nil {
		t.Fatalf("the ServiceAccount may still list networkpolicies: %v", err)
	}
	victim := waitPodsReady(ctx, t, c, cluster.AgentNamespace, agentLabels, len(c.Nodes))[0]
	if err := c.Clientset.CoreV1().Pods(cluster.AgentNamespace).Delete(ctx, victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// Its successor on that node runs, refused, and stays unready.
	var successor *corev1.Pod
	var last string
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		list, err := c.Clientset.CoreV1().Pods(cluster.AgentNamespace).List(ctx, metav1.ListOptions{LabelSelector: agentLabels})
		if err != nil {
			return false, nil
		}
		for i, p := range list.Items {
			if p.Spec.NodeName != victim.Spec.NodeName || p.Name == victim.Name || p.Status.Phase != corev1.PodRunning {
				continue
			}
			logs, err := c.Clientset.CoreV1().Pods(cluster.AgentNamespace).GetLogs(p.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
			if err != nil {
				return false, nil
			}
			last = string(logs)
			if strings.Contains(last, "networkpolicies.networking.k8s.io is forbidden") && strings.Contains(last, "system:serviceaccount:nftpol-system:nftpol") {
				successor = &list.Items[i]
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("the agent restarted without networkpolicies in its role never logged the refusal: %v\n%s", err, tailString(last, 3000))
	}
	// The readiness probe runs every 5 seconds: still unready more than
	// one period later.
	time.Sleep(6 * time.Second)
	p, err := c.Clientset.CoreV1().Pods(cluster.AgentNamespace).Get(ctx, successor.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if podReady(p) {
		t.Fatalf("agent pod %s without the right to list networkpolicies turned ready", p.Name)
	}
	if _, err := c.Kubectl(ctx, "apply", "-k", "../../config/default"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitAgentsReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	t.Logf("RBAC: Event written, a refused agent unready, ready again after the role is restored, in %s", time.Since(began).Round(time.Millisecond))
}

func canListPolicies(ctx context.Context, c *cluster.Cluster) (bool, error) {
	r, err := c.Clientset.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User:   "system:serviceaccount:nftpol-system:nftpol",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:nftpol-system", "system:authenticated"},
		ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: "list", Group: "networking.k8s.io", Resource: "networkpolicies",
		},
	}}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return r.Status.Allowed, nil
}

func ptrTo[T any](v T) *T { return &v }

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// tokenLifetime reads a ServiceAccount token's validity (exp - iat) from
// its claims.
func tokenLifetime(t *testing.T, token string) time.Duration {
	t.Helper()
	parts := strings.Split(strings.TrimSpace(token), ".")
	if len(parts) != 3 {
		t.Fatalf("token is not a JWT: %d parts", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatalf("token claims: %v", err)
	}
	var claims struct{ Exp, Iat int64 }
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatalf("token claims: %v", err)
	}
	return time.Duration(claims.Exp-claims.Iat) * time.Second
}
