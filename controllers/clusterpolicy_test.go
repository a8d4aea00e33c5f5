package controllers

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/klog/v2/textlogger"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/test/kerneltest"
)

// crdPath is the ClusterNetworkPolicy CRD of a channel ("standard" or
// "experimental") in the network-policy-api module the build uses.
func crdPath(t *testing.T, channel string) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		t.Fatalf("locating the network-policy-api module: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "config", "crd", channel)
}

// agentUser is who the agent is in these tests: bound to the ClusterRole
// of config/rbac and nothing else.
const agentUser = "system:serviceaccount:nftpol-system:nftpol"

// bindAgentRole creates the ClusterRole of config/rbac and binds agentUser
// to it, and returns a config acting as agentUser once the binding is in
// force.
func bindAgentRole(t *testing.T, admin client.Client, cfg *rest.Config) *rest.Config {
	t.Helper()
	data, err := os.ReadFile("../config/rbac/cluster_role.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal(data, &role); err != nil {
		t.Fatalf("reading the ClusterRole: %v", err)
	}
	ctx := context.Background()
	if err := admin.Create(ctx, &role); err != nil {
		t.Fatalf("creating the ClusterRole: %v", err)
	}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "nftpol-test"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: agentUser}}}
	if err := admin.Create(ctx, binding); err != nil {
		t.Fatalf("creating the ClusterRoleBinding: %v", err)
	}
	as := rest.CopyConfig(cfg)
	as.Impersonate = rest.ImpersonationConfig{UserName: agentUser}
	c, err := client.New(as, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the ClusterRoleBinding in force", func() error {
		return c.List(ctx, &corev1.NamespaceList{})
	})
	return as
}

// startCNPAgent starts envtest (with the CRDs of crdChannel installed, or
// none when ""), and an agent with the RBAC of config/rbac.
func startCNPAgent(t *testing.T, node, crdChannel string) (*agentEnv, *rest.Config) {
	t.Helper()
	return startCNPAgentWith(t, node, crdChannel, nil)
}

// startCNPAgentWith is startCNPAgent; change, if set, adjusts the agent's
// configuration and options before the manager is made.
func startCNPAgentWith(t *testing.T, node, crdChannel string, change func(*rest.Config, *Options)) (*agentEnv, *rest.Config) {
	t.Helper()
	kerneltest.Require(t, kerneltest.ControlPlane)
	env := &envtest.Environment{}
	if crdChannel != "" {
		env.CRDInstallOptions = envtest.CRDInstallOptions{Paths: []string{crdPath(t, crdChannel)}, ErrorIfPathMissing: true}
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	scheme, err := NewScheme()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	agentCfg := bindAgentRole(t, admin, cfg)

	netns := kerneltest.Netns(t, netnsPrefix)
	log := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(testWriter{t})))
	enforcer, err := nft.NewEnforcer(nft.Config{Table: "nftpol", NetNSPath: netns, Deny: nft.DenyDrop})
	if err != nil {
		t.Fatalf("creating the enforcer: %v", err)
	}
	t.Cleanup(func() { _ = enforcer.Close() })
	reg := prometheus.NewRegistry()
	opts := Options{
		NodeName: node, MetricsBindAddress: "0", HealthProbeBindAddress: "0",
		VerifyInterval: time.Second, Enforcer: enforcer, Log: log,
		SkipNameValidation: true, MetricsRegistry: reg,
		DiscoveryInterval: 200 * time.Millisecond, StatusSpread: -1,
	}
	if change != nil {
		change(agentCfg, &opts)
	}
	mgr, syncer, err := NewManager(agentCfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("manager: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("manager did not stop within 20s")
		}
	})
	return &agentEnv{ctx: ctx, client: admin, kernel: newKernelView(t, netns, "nftpol"), syncer: syncer, metrics: reg}, cfg
}

func adminDeny(name string, priority int32, nsLabels map[string]string) *cnpv1beta1.ClusterNetworkPolicy {
	return &cnpv1beta1.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cnpv1beta1.ClusterNetworkPolicySpec{Tier: cnpv1beta1.AdminTier, Priority: priority,
			Subject: cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: nsLabels}},
			Ingress: []cnpv1beta1.ClusterNetworkPolicyIngressRule{{Name: "deny-all", Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
				From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}}},
	}
}

// webEgressDeny denies the pods labeled app=web egress to 192.0.2.0/24.
func webEgressDeny(name string, tier cnpv1beta1.Tier, priority int32) *cnpv1beta1.ClusterNetworkPolicy {
	return &cnpv1beta1.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: cnpv1beta1.ClusterNetworkPolicySpec{Tier: tier, Priority: priority,
			Subject: cnpv1beta1.ClusterNetworkPolicySubject{Pods: &cnpv1beta1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}},
			Egress: []cnpv1beta1.ClusterNetworkPolicyEgressRule{{Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
				To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"192.0.2.0/24"}}}}}},
	}
}

// wantConditions checks the status of a policy: the given condition types
// with the given statuses, each observing the current generation.
func wantConditions(a *agentEnv, name string, want map[string]metav1.ConditionStatus, messageHas string) func() error {
	return func() error {
		var cnp cnpv1beta1.ClusterNetworkPolicy
		if err := a.client.Get(a.ctx, client.ObjectKey{Name: name}, &cnp); err != nil {
			return err
		}
		all := ""
		for typ, st := range want {
			c := meta.FindStatusCondition(cnp.Status.Conditions, typ)
			if c == nil || c.Status != st || c.ObservedGeneration != cnp.Generation {
				return fmt.Errorf("condition %s = %+v, want status %s at generation %d", typ, c, st, cnp.Generation)
			}
			all += c.Message + "\n"
		}
		if !strings.Contains(all, messageHas) {
			return fmt.Errorf("messages %q lack %q", all, messageHas)
		}
		return nil
	}
}

// TestClusterPolicyCRDAppearsLater: an agent started without the CRD
// enforces NetworkPolicies as before; when the (experimental) CRD is
// installed it finds it, enforces the policies, and writes their status
// with no more rights than config/rbac grants.
func TestClusterPolicyCRDAppearsLater(t *testing.T) {
	a, cfg := startCNPAgent(t, "node-1", "")
	a.createNamespace(t, "prod", map[string]string{"env": "prod"})
	a.createPod(t, "prod", "web", "node-1", map[string]string{"app": "web"}, "10.1.0.1", "fd00:1::1")
	time.Sleep(time.Second) // a few discovery polls without the API
	eventually(t, "no pod isolated without policies", wantKeys(a.kernel, nft.MapIngressV4))
	if a.syncer.cached.clusterPolicies.Active() {
		t.Fatal("ClusterNetworkPolicy informers run without the CRD")
	}

	if _, err := envtest.InstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{crdPath(t, "experimental")}, ErrorIfPathMissing: true}); err != nil {
		t.Fatalf("installing the CRD: %v", err)
	}
	deny := adminDeny("deny-prod", 10, map[string]string{"env": "prod"})
	// A domainNames peer cannot be enforced: status says so.
	deny.Spec.Egress = []cnpv1beta1.ClusterNetworkPolicyEgressRule{{Action: cnpv1beta1.ClusterNetworkPolicyRuleActionAccept,
		To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnpv1beta1.DomainName{"example.com"}}}}}
	eventually(t, "creating a ClusterNetworkPolicy", func() error { return a.client.Create(a.ctx, deny) })
	eventually(t, "the pod selected by the admin deny", wantKeys(a.kernel, nft.MapIngressV4, "10.1.0.1"))
	eventually(t, "the pod selected by the admin deny (v6)", wantKeys(a.kernel, nft.MapIngressV6, "fd00:1::1"))
	eventually(t, "the CNP gauges", func() error {
		pods, policies, isolated := gaugeValue(t, a.metrics, "nftpol_cluster_policy_pods"), gaugeValue(t, a.metrics, "nftpol_cluster_policies"), gaugeValue(t, a.metrics, "nftpol_isolated_pods")
		if pods != 1 || policies != 1 || isolated != 0 {
			return fmt.Errorf("cluster policy pods %v, cluster policies %v, isolated pods %v; want 1, 1, 0", pods, policies, isolated)
		}
		return nil
	})
	eventually(t, "status of deny-prod", wantConditions(a, "deny-prod", map[string]metav1.ConditionStatus{
		ConditionAccepted: metav1.ConditionTrue, ConditionPartiallyEnforced: metav1.ConditionTrue, ConditionPriorityTie: metav1.ConditionFalse,
	}, "domainNames are not supported"))
	// And an Event on the policy, in namespace default.
	eventually(t, "an Event about deny-prod", func() error {
		var list eventsv1.EventList
		if err := a.client.List(a.ctx, &list, client.InNamespace("default")); err != nil {
			return err
		}
		for _, ev := range list.Items {
			if ev.Regarding.Kind == "ClusterNetworkPolicy" && ev.Regarding.Name == "deny-prod" && strings.Contains(ev.Note, "domainNames") {
				return nil
			}
		}
		return fmt.Errorf("no Event about deny-prod among %d", len(list.Items))
	})

	// A second policy of the same tier and priority: both report the tie.
	tie := adminDeny("also-10", 10, map[string]string{"env": "dev"})
	if err := a.client.Create(a.ctx, tie); err != nil {
		t.Fatal(err)
	}
	eventually(t, "tie on deny-prod", wantConditions(a, "deny-prod", map[string]metav1.ConditionStatus{ConditionPriorityTie: metav1.ConditionTrue}, "also-10"))
	eventually(t, "tie on also-10", wantConditions(a, "also-10", map[string]metav1.ConditionStatus{
		ConditionAccepted: metav1.ConditionTrue, ConditionPartiallyEnforced: metav1.ConditionFalse, ConditionPriorityTie: metav1.ConditionTrue}, "deny-prod"))

	// A nodes peer: the agent watches Nodes (with its RBAC) and puts the
	// addresses of the matching ones in a set.
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "cp-1", Labels: map[string]string{"role": "control-plane"}}}
	if err := a.client.Create(a.ctx, node); err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.7.1"}, {Type: corev1.NodeHostName, Address: "cp-1"}}
	if err := a.client.Status().Update(a.ctx, node); err != nil {
		t.Fatal(err)
	}
	toNodes := adminDeny("deny-to-control-plane", 20, map[string]string{"env": "prod"})
	toNodes.Spec.Ingress = nil
	toNodes.Spec.Egress = []cnpv1beta1.ClusterNetworkPolicyEgressRule{{Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
		To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "control-plane"}}}}}}
	if err := a.client.Create(a.ctx, toNodes); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the node address in a peer set", wantInSomeSet(a.kernel, "192.168.7.1", true))
	eventually(t, "the pod in the egress map", wantKeys(a.kernel, nft.MapEgressV4, "10.1.0.1"))
	a.relabel(t, node, map[string]string{"role": "worker"})
	eventually(t, "the relabelled node's address out of the set", wantInSomeSet(a.kernel, "192.168.7.1", false))

	// The namespace relabelled out of the subject: the pod leaves the map.
	var ns corev1.Namespace
	ns.Name = "prod"
	a.relabel(t, &ns, map[string]string{"env": "staging"})
	eventually(t, "the pod out of the subject", wantKeys(a.kernel, nft.MapIngressV4))

	// What the agent's credentials allow and refuse.
	as, err := client.New(agentUserConfig(cfg), client.Options{Scheme: a.client.Scheme()})
	if err != nil {
		t.Fatal(err)
	}
	var got cnpv1beta1.ClusterNetworkPolicy
	if err := as.Get(a.ctx, client.ObjectKey{Name: "deny-prod"}, &got); err != nil {
		t.Fatalf("get as the agent: %v", err)
	}
	got.Spec.Priority = 11
	if err := as.Update(a.ctx, &got); !apierrors.IsForbidden(err) {
		t.Errorf("updating a policy's spec as the agent: %v, want Forbidden", err)
	}
	if err := as.Create(a.ctx, adminDeny("mine", 1, nil)); !apierrors.IsForbidden(err) {
		t.Errorf("creating a policy as the agent: %v, want Forbidden", err)
	}
	if err := as.Delete(a.ctx, &got); !apierrors.IsForbidden(err) {
		t.Errorf("deleting a policy as the agent: %v, want Forbidden", err)
	}

	// The CRD removed: the agent stops its informers and goes on with
	// NetworkPolicies alone.
	if err := envtest.UninstallCRDs(cfg, envtest.CRDInstallOptions{Paths: []string{crdPath(t, "experimental")}}); err != nil {
		t.Fatalf("removing the CRD: %v", err)
	}
	eventually(t, "the informers stopped", func() error {
		if a.syncer.cached.clusterPolicies.Active() {
			return fmt.Errorf("still active")
		}
		return nil
	})
	// Syncs go on and succeed: an isolating NetworkPolicy is enforced.
	npDeny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "deny"},
		Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	if err := a.client.Create(a.ctx, npDeny); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a NetworkPolicy enforced without the CRD", wantKeys(a.kernel, nft.MapIngressV4, "10.1.0.1"))
	if f := gaugeValue(t, a.metrics, "nftpol_sync_consecutive_failures"); f != 0 {
		t.Errorf("%v syncs in a row failed after the CRD went", f)
	}
}

func agentUserConfig(cfg *rest.Config) *rest.Config {
	as := rest.CopyConfig(cfg)
	as.Impersonate = rest.ImpersonationConfig{UserName: agentUser}
	return as
}

// TestClusterPolicyCRDAtStart: with the standard CRD installed before the
// agent starts, policies are enforced from the first syncs; deleting the
// policy removes the pod's element.
func TestClusterPolicyCRDAtStart(t *testing.T) {
	a, _ := startCNPAgent(t, "node-1", "standard")
	a.createNamespace(t, "prod", map[string]string{"env": "prod"})
	a.createPod(t, "prod", "web", "node-1", map[string]string{"app": "web"}, "10.1.0.1")
	a.createPod(t, "prod", "other-node", "node-2", map[string]string{"app": "web"}, "10.1.0.2")
	base := webEgressDeny("baseline-deny", cnpv1beta1.BaselineTier, 0)
	if err := a.client.Create(a.ctx, base); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the local subject pod in the egress map", wantKeys(a.kernel, nft.MapEgressV4, "10.1.0.1"))
	eventually(t, "status of baseline-deny", wantConditions(a, "baseline-deny", map[string]metav1.ConditionStatus{
		ConditionAccepted: metav1.ConditionTrue, ConditionPartiallyEnforced: metav1.ConditionFalse, ConditionPriorityTie: metav1.ConditionFalse}, ""))
	if err := a.client.Delete(a.ctx, base); err != nil {
		t.Fatal(err)
	}
	eventually(t, "no pod in the egress map", wantKeys(a.kernel, nft.MapEgressV4))

	// The samples: accepted by the CRD's validation, nothing the agent
	// cannot enforce.
	for _, cnp := range readSamples(t) {
		if err := a.client.Create(a.ctx, cnp); err != nil {
			t.Fatalf("creating sample %s: %v", cnp.Name, err)
		}
		eventually(t, "status of sample "+cnp.Name, wantConditions(a, cnp.Name, map[string]metav1.ConditionStatus{
			ConditionAccepted: metav1.ConditionTrue, ConditionPartiallyEnforced: metav1.ConditionFalse, ConditionPriorityTie: metav1.ConditionFalse}, ""))
	}
}

// readSamples reads config/samples/clusternetworkpolicy strictly.
func readSamples(t *testing.T) []*cnpv1beta1.ClusterNetworkPolicy {
	t.Helper()
	files, err := filepath.Glob("../config/samples/clusternetworkpolicy/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []*cnpv1beta1.ClusterNetworkPolicy
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, doc := range strings.Split(string(data), "\n---") {
			var cnp cnpv1beta1.ClusterNetworkPolicy
			if err := yaml.UnmarshalStrict([]byte(doc), &cnp); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			out = append(out, &cnp)
		}
	}
	if len(out) < 3 {
		t.Fatalf("found %d sample policies, want at least 3", len(out))
	}
	return out
}
