// Package manifests checks config/: the kustomize bases render, the API
// server accepts them, and the ClusterRole is exactly enough for the agent.
package manifests

import (
	"slices"

	"bytes"
	"context"
	"fmt"
	"k8s.io/utils/ptr"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/nftpol/nftpol/test/testbed"
)

const serviceAccount = "system:serviceaccount:nftpol-system:nftpol"

// render builds config/default with the kustomize library (what `kubectl
// apply -k` runs), from the files on disk: no kubectl or kustomize binary
// is needed.
func render(t *testing.T) []*unstructured.Unstructured {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join("..", "..", "config", "default"))
	if err != nil {
		t.Fatalf("kustomize build config/default: %v", err)
	}
	// Through YAML, as kubectl would send it: the resources' own maps hold
	// Go ints, which unstructured objects do not take.
	out, err := resources.AsYaml()
	if err != nil {
		t.Fatalf("rendering config/default as YAML: %v", err)
	}
	var objs []*unstructured.Unstructured
	for _, doc := range bytes.Split(out, []byte("\n---\n")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		u := &unstructured.Unstructured{}
		if err := yaml.Unmarshal(doc, &u.Object); err != nil {
			t.Fatalf("rendered YAML does not parse: %v", err)
		}
		objs = append(objs, u)
	}
	if len(objs) == 0 {
		t.Fatal("config/default renders nothing")
	}
	return objs
}

func find(t *testing.T, objs []*unstructured.Unstructured, kind string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind {
			return o
		}
	}
	t.Fatalf("rendered manifests have no %s", kind)
	return nil
}

func TestDaemonSetProperties(t *testing.T) {
	objs := render(t)
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, objs, "DaemonSet").Object, &ds); err != nil {
		t.Fatal(err)
	}
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	sc := c.SecurityContext
	env := map[string]*corev1.EnvVarSource{}
	for _, e := range c.Env {
		env[e.Name] = e.ValueFrom
	}
	checks := []struct {
		what string
		ok   bool
	}{
		{"namespace nftpol-system", ds.Namespace == "nftpol-system"},
		{"hostNetwork", spec.HostNetwork},
		{"system-node-critical", spec.PriorityClassName == "system-node-critical"},
		{"tolerates every taint", len(spec.Tolerations) == 1 && spec.Tolerations[0].Operator == corev1.TolerationOpExists && spec.Tolerations[0].Key == ""},
		{"service account", spec.ServiceAccountName == "nftpol"},
		{"NODE_NAME from spec.nodeName", env["NODE_NAME"] != nil && env["NODE_NAME"].FieldRef != nil && env["NODE_NAME"].FieldRef.FieldPath == "spec.nodeName"},
		// The agent derives GOMEMLIMIT from the limit (85 %); GOMEMLIMIT
		// itself equal to the limit would leave the collector idle until
		// the OOM killer strikes.
		{"NFTPOL_MEMORY_LIMIT from limits.memory, in bytes", env["NFTPOL_MEMORY_LIMIT"] != nil && env["NFTPOL_MEMORY_LIMIT"].ResourceFieldRef != nil &&
			env["NFTPOL_MEMORY_LIMIT"].ResourceFieldRef.Resource == "limits.memory" && env["NFTPOL_MEMORY_LIMIT"].ResourceFieldRef.Divisor.IsZero()},
		{"no GOMEMLIMIT (it would override the derived one)", env["GOMEMLIMIT"] == nil},
		{"no other environment", len(env) == 2 && len(c.Env) == 2},
		{"not privileged", sc != nil && sc.Privileged != nil && !*sc.Privileged},
		{"drop ALL, add NET_ADMIN only", sc != nil && sc.Capabilities != nil && fmt.Sprint(sc.Capabilities.Drop) == "[ALL]" && fmt.Sprint(sc.Capabilities.Add) == "[NET_ADMIN]"},
		{"no privilege escalation", sc != nil && sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation},
		{"read-only root", sc != nil && sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem},
		{"liveness on /healthz", c.LivenessProbe != nil && c.LivenessProbe.HTTPGet != nil && c.LivenessProbe.HTTPGet.Path == "/healthz"},
		{"readiness on /readyz", c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path == "/readyz"},
		{"memory limit", !c.Resources.Limits.Memory().IsZero()},
		{"requests", !c.Resources.Requests.Cpu().IsZero() && !c.Resources.Requests.Memory().IsZero()},
		{"rolling update, maxUnavailable 1", ds.Spec.UpdateStrategy.RollingUpdate != nil && ds.Spec.UpdateStrategy.RollingUpdate.MaxUnavailable.IntValue() == 1},
		{"image set by kustomize", c.Image == "nftpol:dev"},
		// The CNI plugin (README, "No window at pod start"): installed by
		// an init container of the same image, with no capability, and
		// the agent answers on the socket it writes into the conflist.
		{"init container installs the CNI plugin", len(spec.InitContainers) == 1 && spec.InitContainers[0].Image == c.Image &&
			slices.Contains(spec.InitContainers[0].Args, "cni-install") && slices.Contains(spec.InitContainers[0].Args, "--socket=/run/nftpol/cni.sock")},
		{"init container: no capability, read-only root", len(spec.InitContainers) == 1 && spec.InitContainers[0].SecurityContext != nil &&
			spec.InitContainers[0].SecurityContext.Capabilities != nil && len(spec.InitContainers[0].SecurityContext.Capabilities.Add) == 0 &&
			fmt.Sprint(spec.InitContainers[0].SecurityContext.Capabilities.Drop) == "[ALL]" &&
			ptr.Deref(spec.InitContainers[0].SecurityContext.ReadOnlyRootFilesystem, false)},
		{"agent answers the plugin on /run/nftpol/cni.sock", slices.Contains(c.Args, "--cni-socket=/run/nftpol/cni.sock") &&
			len(c.VolumeMounts) == 1 && c.VolumeMounts[0].MountPath == "/run/nftpol"},
	}
	for _, ch := range checks {
		if !ch.ok {
			t.Errorf("DaemonSet: %s", ch.what)
		}
	}
}

// impersonated returns cfg acting as the agent's ServiceAccount.
func impersonated(cfg *rest.Config) *rest.Config {
	c := rest.CopyConfig(cfg)
	c.Impersonate = rest.ImpersonationConfig{UserName: serviceAccount}
	return c
}

func TestManifestsAcceptedAndRBACIsLeastPrivilege(t *testing.T) {
	objs := render(t)
	cp := testbed.StartControlPlaneT(t)
	ctx := context.Background()
	c, err := client.New(cp.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The namespace for real (a dry-run create in a missing namespace
	// fails), everything else server-side dry-run first.
	if err := c.Create(ctx, find(t, objs, "Namespace")); err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			continue
		}
		if err := c.Create(ctx, o.DeepCopy(), client.DryRunAll); err != nil {
			t.Errorf("server-side dry-run of %s %s: %v", o.GetKind(), o.GetName(), err)
		}
	}
	for _, kind := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding"} {
		if err := c.Create(ctx, find(t, objs, kind).DeepCopy()); err != nil {
			t.Fatalf("creating %s: %v", kind, err)
		}
	}

	sa, err := kubernetes.NewForConfig(impersonated(cp.Config))
	if err != nil {
		t.Fatal(err)
	}
	// The API server's RBAC authorizer learns of new bindings through its
	// own informers: wait (bounded) until the binding is in force before
	// judging what it allows.
	deadline := time.Now().Add(15 * time.Second)
	for {
		_, err := sa.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			t.Fatalf("the ClusterRoleBinding is not in force after 15 s: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ev := &eventsv1.Event{ObjectMeta: metav1.ObjectMeta{Name: "probe", Namespace: "default"},
		EventTime: metav1.NowMicro(), ReportingController: "nftpol", ReportingInstance: "nftpol", Action: "Enforce", Type: corev1.EventTypeWarning,
		Regarding: corev1.ObjectReference{Kind: "NetworkPolicy", Namespace: "default", Name: "x"}, Reason: "Test", Note: "m"}
	allowed := map[string]func() error{
		"list pods":       func() error { _, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{}); return err },
		"list namespaces": func() error { _, err := sa.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); return err },
		"list networkpolicies": func() error {
			_, err := sa.NetworkingV1().NetworkPolicies("").List(ctx, metav1.ListOptions{})
			return err
		},
		"create, get and update events (events.k8s.io)": func() error {
			created, err := sa.EventsV1().Events("default").Create(ctx, ev, metav1.CreateOptions{})
			if err != nil {
				return err
			}
			got, err := sa.EventsV1().Events("default").Get(ctx, created.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			got.Series = &eventsv1.EventSeries{Count: 2, LastObservedTime: metav1.NowMicro()}
			_, err = sa.EventsV1().Events("default").Update(ctx, got, metav1.UpdateOptions{})
			return err
		},
		// For the nodes peers of ClusterNetworkPolicies.
		"list nodes": func() error { _, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); return err },
		"watch networkpolicies": func() error {
			w, err := sa.NetworkingV1().NetworkPolicies("").Watch(ctx, metav1.ListOptions{})
			stopWatch(w)
			return err
		},
	}
	forbidden := map[string]func() error{
		"list secrets": func() error { _, err := sa.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); return err },
		"update nodes": func() error {
			_, err := sa.CoreV1().Nodes().Update(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}}, metav1.UpdateOptions{})
			return err
		},
		"create pods": func() error {
			_, err := sa.CoreV1().Pods("default").Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "i"}}}}, metav1.CreateOptions{})
			return err
		},
		"delete pods": func() error { return sa.CoreV1().Pods("default").Delete(ctx, "p", metav1.DeleteOptions{}) },
		// The agent writes events.k8s.io Events only, and never lists them.
		"create events (core)": func() error {
			_, err := sa.CoreV1().Events("default").Create(ctx, &corev1.Event{ObjectMeta: metav1.ObjectMeta{Name: "core", Namespace: "default"},
				InvolvedObject: corev1.ObjectReference{Kind: "NetworkPolicy", Namespace: "default", Name: "x"}, Reason: "Test", Message: "m"}, metav1.CreateOptions{})
			return err
		},
		"list events": func() error { _, err := sa.EventsV1().Events("").List(ctx, metav1.ListOptions{}); return err },
		"delete events": func() error {
			return sa.EventsV1().Events("default").Delete(ctx, "probe", metav1.DeleteOptions{})
		},
		"create a policy": func() error {
			_, err := sa.NetworkingV1().NetworkPolicies("default").Create(ctx, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p"}}, metav1.CreateOptions{})
			return err
		},
		"update namespaces": func() error {
			_, err := sa.CoreV1().Namespaces().Update(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.UpdateOptions{})
			return err
		},
	}
	for what, call := range allowed {
		if err := call(); err != nil {
			t.Errorf("%s as the agent: %v", what, err)
		}
	}
	for what, call := range forbidden {
		if err := call(); !apierrors.IsForbidden(err) {
			t.Errorf("%s as the agent: got %v, want Forbidden", what, err)
		}
	}

	// The agent itself, with exactly these credentials, enforces a policy.
	kubeconfig := writeImpersonatingKubeconfig(t, cp)
	bed := testbed.NewT(t, cp, testbed.Options{Prefix: "nftpol-rbac", Nodes: 1})
	if err := bed.EnsureNamespace(ctx, "rbac", nil); err != nil {
		t.Fatal(err)
	}
	var pods []*testbed.Pod
	for _, name := range []string{"server", "client"} {
		p, err := bed.AddPod(ctx, testbed.PodSpec{Namespace: "rbac", Name: name, Node: bed.Nodes[0].Name, Labels: map[string]string{"app": name}})
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	testbed.StartAgentT(t, cp, bed.Nodes[0], "--kubeconfig", kubeconfig, "--deny-action", "reject")
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "rbac", Name: "deny-server"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}}}
	if _, err := cp.Clientset.NetworkingV1().NetworkPolicies("rbac").Create(ctx, deny, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	server, clientPod := pods[0], pods[1]
	var lastErr error
	for attempt := 0; attempt < 50; attempt++ {
		lastErr = testbed.Probe(clientPod, server.IPv4, testbed.TCP, 80, server.Key(), 500*time.Millisecond)
		if lastErr != nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if lastErr == nil {
		t.Fatal("the agent running as the ServiceAccount did not enforce the policy within 5s")
	}
	if err := testbed.Probe(server, clientPod.IPv4, testbed.TCP, 80, clientPod.Key(), time.Second); err != nil {
		t.Fatalf("egress of the server is not isolated and must pass: %v", err)
	}

	// A policy part the agent cannot enforce: the role lets it write the
	// Event (its log would show a Forbidden error otherwise).
	noSuchPort := intstr.FromString("no-such-port")
	bad := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "rbac", Name: "bad-port"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &noSuchPort}}}},
		}}
	if _, err := cp.Clientset.NetworkingV1().NetworkPolicies("rbac").Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var events []eventsv1.Event
	for attempt := 0; attempt < 100 && len(events) == 0; attempt++ {
		list, err := cp.Clientset.EventsV1().Events("rbac").List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range list.Items {
			if e.Regarding.Name == "bad-port" && e.Reason == "PartlyUnenforceable" {
				events = append(events, e)
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if len(events) != 1 {
		t.Fatalf("%d PartlyUnenforceable Events written by the agent as its ServiceAccount within 10s, want 1", len(events))
	}
}

func stopWatch(w interface{ Stop() }) {
	if w != nil {
		w.Stop()
	}
}

// writeImpersonatingKubeconfig writes a kubeconfig that authenticates as the
// envtest admin and acts as the agent's ServiceAccount.
func writeImpersonatingKubeconfig(t *testing.T, cp *testbed.ControlPlane) string {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(cp.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, ai := range cfg.AuthInfos {
		ai.Impersonate = serviceAccount
	}
	path := filepath.Join(t.TempDir(), "kubeconfig-as-agent")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(mustRead(t, path), serviceAccount) {
		t.Fatal("kubeconfig lacks the impersonation")
	}
	return path
}

func mustRead(t *testing.T, path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
