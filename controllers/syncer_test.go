package controllers

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/klog/v2/textlogger"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/test/kerneltest"
)

// These tests run the agent's manager in process against a real
// kube-apiserver (envtest) and a real nftables table in a network namespace
// the test creates, and read the kernel state back after each object
// change.

// netnsPrefix names the network namespaces of this package's tests.
const netnsPrefix = "nftpol-ctrl"

// kernelView reads our table in the test's namespace.
type kernelView struct {
	t     *testing.T
	conn  *nftables.Conn
	table *nftables.Table
}

func newKernelView(t *testing.T, netnsPath, table string) *kernelView {
	f, err := os.Open(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	conn, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	return &kernelView{t: t, conn: conn, table: &nftables.Table{Name: table, Family: nftables.TableFamilyINet}}
}

// mapKeys returns the addresses that are keys of a verdict map.
func (k *kernelView) mapKeys(name string) ([]netip.Addr, error) {
	set, err := k.conn.GetSetByName(k.table, name)
	if err != nil {
		return nil, fmt.Errorf("reading map %s: %w", name, err)
	}
	elems, err := k.conn.GetSetElements(set)
	if err != nil {
		return nil, fmt.Errorf("reading elements of %s: %w", name, err)
	}
	var out []netip.Addr
	for _, e := range elems {
		if a, ok := netip.AddrFromSlice(e.Key); ok {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out, nil
}

// setsContaining returns the names of our plain address sets holding addr.
func (k *kernelView) setsContaining(addr netip.Addr) ([]string, error) {
	sets, err := k.conn.GetSets(k.table)
	if err != nil {
		return nil, fmt.Errorf("listing sets: %w", err)
	}
	var names []string
	for _, s := range sets {
		if s.IsMap || s.Concatenation {
			continue
		}
		elems, err := k.conn.GetSetElements(s)
		if err != nil {
			return nil, fmt.Errorf("reading set %s: %w", s.Name, err)
		}
		for _, e := range elems {
			if a, ok := netip.AddrFromSlice(e.Key); ok && a == addr && !e.IntervalEnd {
				names = append(names, s.Name)
				break
			}
		}
	}
	return names, nil
}

// eventually polls check every 50 ms for at most 15 s.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var err error
	for attempt := 0; attempt < 300 && time.Now().Before(deadline); attempt++ {
		if err = check(); err == nil {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not reached within 15s: %v", what, err)
}

type agentEnv struct {
	ctx     context.Context
	client  client.Client
	kernel  *kernelView
	syncer  *Syncer
	metrics *prometheus.Registry
}

func startAgent(t *testing.T, node string) *agentEnv {
	t.Helper()
	return startAgentWith(t, node, nil)
}

// startAgentWith starts an agent with periodic verification (and with it
// the periodic sync) every second; change, if set, adjusts its options
// (and may wrap its Enforcer) before the manager is made.
func startAgentWith(t *testing.T, node string, change func(*Options)) *agentEnv {
	t.Helper()
	cfg := startControlPlane(t)

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
	}
	if change != nil {
		change(&opts)
	}
	mgr, syncer, err := NewManager(cfg, opts)
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
	c, err := client.New(cfg, client.Options{Scheme: mgr.GetScheme()})
	if err != nil {
		t.Fatal(err)
	}
	return &agentEnv{ctx: ctx, client: c, kernel: newKernelView(t, netns, "nftpol"), syncer: syncer, metrics: reg}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (a *agentEnv) createNamespace(t *testing.T, name string, labels map[string]string) {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if err := a.client.Create(a.ctx, ns); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}

// createPod creates a running pod with the given addresses, as the kubelet
// would report it.
func (a *agentEnv) createPod(t *testing.T, ns, name, node string, labels map[string]string, ips ...string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
			Name: "c", Image: "none",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
		}}},
	}
	if err := a.client.Create(a.ctx, pod); err != nil {
		t.Fatalf("creating pod %s/%s: %v", ns, name, err)
	}
	pod.Status.Phase = corev1.PodRunning
	pod.Status.PodIP = ips[0]
	for _, ip := range ips {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if err := a.client.Status().Update(a.ctx, pod); err != nil {
		t.Fatalf("writing status of pod %s/%s: %v", ns, name, err)
	}
	return pod
}

func (a *agentEnv) relabel(t *testing.T, obj client.Object, labels map[string]string) {
	t.Helper()
	if err := a.client.Get(a.ctx, client.ObjectKeyFromObject(obj), obj); err != nil {
		t.Fatal(err)
	}
	obj.SetLabels(labels)
	if err := a.client.Update(a.ctx, obj); err != nil {
		t.Fatalf("relabeling %s: %v", obj.GetName(), err)
	}
}

func wantKeys(k *kernelView, mapName string, want ...string) func() error {
	return func() error {
		got, err := k.mapKeys(mapName)
		if err != nil {
			return err
		}
		var gotS []string
		for _, a := range got {
			gotS = append(gotS, a.String())
		}
		if !slices.Equal(gotS, want) {
			return fmt.Errorf("map %s holds %v, want %v", mapName, gotS, want)
		}
		return nil
	}
}

func wantInSomeSet(k *kernelView, addr string, want bool) func() error {
	return func() error {
		names, err := k.setsContaining(netip.MustParseAddr(addr))
		if err != nil {
			return err
		}
		if (len(names) > 0) != want {
			return fmt.Errorf("%s is in sets %v, want present=%v", addr, names, want)
		}
		return nil
	}
}

func TestMain(m *testing.M) {
	// controller-runtime's packages log through a global delegating
	// logger; give it one so envtest's client does not complain.
	ctrllog.SetLogger(textlogger.NewLogger(textlogger.NewConfig()))
	os.Exit(m.Run())
}

func TestObjectChangesReachTheKernel(t *testing.T) {
	a := startAgent(t, "node-a")
	k := a.kernel

	eventually(t, "first sync commits an empty table", func() error {
		if !a.syncer.Synced() {
			return errors.New("not synced")
		}
		return wantKeys(k, "ingress_v4")()
	})

	a.createNamespace(t, "ct-x", map[string]string{"team": "x"})
	server := a.createPod(t, "ct-x", "server", "node-a", map[string]string{"app": "server"}, "10.1.0.10", "fd00:1::10")
	clientPod := a.createPod(t, "ct-x", "client", "node-b", map[string]string{"role": "client"}, "10.1.0.20", "fd00:1::20")
	remote := a.createPod(t, "ct-x", "remote", "node-b", map[string]string{"app": "server"}, "10.1.0.30")

	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ct-x", Name: "allow-client"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}},
			}},
		},
	}
	if err := a.client.Create(a.ctx, pol); err != nil {
		t.Fatal(err)
	}
	// Only the local selected pod is isolated here; the remote one is the
	// other node's business.
	eventually(t, "policy isolates the local pod", wantKeys(k, "ingress_v4", "10.1.0.10"))
	eventually(t, "policy isolates the local pod (IPv6)", wantKeys(k, "ingress_v6", "fd00:1::10"))
	eventually(t, "egress stays open", wantKeys(k, "egress_v4"))
	eventually(t, "peer set holds the client", wantInSomeSet(k, "10.1.0.20", true))
	eventually(t, "peer set holds the client (IPv6)", wantInSomeSet(k, "fd00:1::20", true))
	_ = remote

	a.relabel(t, clientPod, map[string]string{"role": "other"})
	eventually(t, "relabeled client leaves the peer set", wantInSomeSet(k, "10.1.0.20", false))

	a.relabel(t, clientPod, map[string]string{"role": "client"})
	eventually(t, "client joins again", wantInSomeSet(k, "10.1.0.20", true))

	a.relabel(t, server, map[string]string{"app": "other"})
	eventually(t, "server out of the selector is open", wantKeys(k, "ingress_v4"))

	a.relabel(t, server, map[string]string{"app": "server"})
	eventually(t, "server isolated again", wantKeys(k, "ingress_v4", "10.1.0.10"))

	// Without a kubelet, only a zero grace period removes a scheduled pod;
	// a terminating pod still runs and keeps its place in the sets.
	if err := a.client.Delete(a.ctx, clientPod, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted client leaves the peer set", wantInSomeSet(k, "10.1.0.20", false))

	if err := a.client.Delete(a.ctx, pol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "deleted policy opens the pod", wantKeys(k, "ingress_v4"))
}

func TestDriftIsRepaired(t *testing.T) {
	a := startAgent(t, "node-a")
	k := a.kernel
	a.createNamespace(t, "ct-d", nil)
	a.createPod(t, "ct-d", "server", "node-a", map[string]string{"app": "server"}, "10.2.0.10")
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ct-d", Name: "deny"},
		Spec:       networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{}},
	}
	if err := a.client.Create(a.ctx, pol); err != nil {
		t.Fatal(err)
	}
	eventually(t, "policy isolates the pod", wantKeys(k, "ingress_v4", "10.2.0.10"))

	// A third party flushes our table: the periodic verification (1s in
	// this test) notices and replaces it.
	k.conn.FlushTable(k.table)
	if err := k.conn.Flush(); err != nil {
		t.Fatalf("flushing the table as a third party: %v", err)
	}
	eventually(t, "flushed table is restored", wantKeys(k, "ingress_v4", "10.2.0.10"))
}

func TestUnenforceablePolicyGetsAnEventAndOthersStillWork(t *testing.T) {
	a := startAgent(t, "node-a")
	k := a.kernel
	a.createNamespace(t, "ct-b", nil)
	a.createPod(t, "ct-b", "server", "node-a", map[string]string{"app": "server"}, "10.3.0.10")
	a.createPod(t, "ct-b", "other", "node-a", map[string]string{"app": "other"}, "10.3.0.11")

	noSuchPort := intstr.FromString("no-such-port")
	bad := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ct-b", Name: "bad-port"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				// The API server accepts a port name that no pod defines.
				Ports: []networkingv1.NetworkPolicyPort{{Port: &noSuchPort}},
			}},
		},
	}
	good := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ct-b", Name: "good"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "other"}},
		},
	}
	for _, p := range []*networkingv1.NetworkPolicy{bad, good} {
		if err := a.client.Create(a.ctx, p); err != nil {
			t.Fatalf("creating %s: %v", p.Name, err)
		}
	}
	eventually(t, "both policies isolate their pods", wantKeys(k, "ingress_v4", "10.3.0.10", "10.3.0.11"))
	eventually(t, "an Event tells about the bad policy", func() error {
		var events eventsv1.EventList
		if err := a.client.List(a.ctx, &events, client.InNamespace("ct-b")); err != nil {
			return err
		}
		for _, e := range events.Items {
			if e.Regarding.Name == "bad-port" && e.Reason == "PartlyUnenforceable" {
				return nil
			}
		}
		return fmt.Errorf("no PartlyUnenforceable event among %d events", len(events.Items))
	})
}
