package test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

var (
	modelNamespaces = []string{"x", "y", "z"}
	modelPods       = []string{"a", "b", "c"}
)

// probeSpecs are measured for every step: TCP and UDP, ports 80 and 81,
// IPv4 and IPv6.
func probeSpecs() []testbed.ProbeSpec {
	var out []testbed.ProbeSpec
	for _, fam := range []int{4, 6} {
		for _, proto := range []testbed.Proto{testbed.TCP, testbed.UDP} {
			for _, port := range []int{80, 81} {
				out = append(out, testbed.ProbeSpec{Family: fam, Proto: proto, Port: port, Timeout: time.Second})
			}
		}
	}
	return out
}

// modelBed is the upstream model on two nodes with one agent per node.
type modelBed struct {
	cp     *testbed.ControlPlane
	bed    *testbed.Bed
	pods   []*testbed.Pod
	keys   []string
	agents map[string]*testbed.Agent // by node name
	probes atomic.Int64
}

func (m *modelBed) PodPrefixes(key string) []string {
	p := m.bed.Pod(key)
	return []string{netip.PrefixFrom(p.IPv4, 32).String(), netip.PrefixFrom(p.IPv6, 128).String()}
}

func startModel(t *testing.T, prefix string, agentArgs ...string) *modelBed {
	t.Helper()
	return startModelOn(t, testbed.StartControlPlaneT(t), prefix, agentArgs...)
}

// startModelOn is startModel on a control plane the test started.
func startModelOn(t *testing.T, cp *testbed.ControlPlane, prefix string, agentArgs ...string) *modelBed {
	t.Helper()
	bed := testbed.NewT(t, cp, testbed.Options{Prefix: prefix, Nodes: 2})
	ctx := context.Background()
	m := &modelBed{cp: cp, bed: bed, agents: map[string]*testbed.Agent{}}
	for i, ns := range modelNamespaces {
		if err := bed.EnsureNamespace(ctx, ns, map[string]string{"ns": ns}); err != nil {
			t.Fatal(err)
		}
		for j, name := range modelPods {
			// Alternate nodes so every pod has same-node and cross-node peers.
			node := bed.Nodes[(i+j)%2].Name
			p, err := bed.AddPod(ctx, testbed.PodSpec{Namespace: ns, Name: name, Node: node, Labels: map[string]string{"pod": name}})
			if err != nil {
				t.Fatal(err)
			}
			m.pods = append(m.pods, p)
			m.keys = append(m.keys, p.Key())
		}
	}
	for _, n := range bed.Nodes {
		m.agents[n.Name] = testbed.StartAgentT(t, cp, n, agentArgs...)
	}
	return m
}

// reset deletes every ClusterNetworkPolicy and every policy of the model
// namespaces, and restores labels.
func (m *modelBed) reset(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	cs := m.cp.Clientset
	if err := m.cp.Client.DeleteAllOf(ctx, &policyv1beta1.ClusterNetworkPolicy{}); err != nil {
		t.Fatalf("deleting cluster network policies: %v", err)
	}
	for _, ns := range modelNamespaces {
		if err := cs.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			t.Fatalf("deleting policies of %s: %v", ns, err)
		}
		if err := m.bed.EnsureNamespace(ctx, ns, map[string]string{"ns": ns}); err != nil {
			t.Fatal(err)
		}
		for _, name := range modelPods {
			if err := m.bed.SetPodLabels(ctx, ns, name, map[string]string{"pod": name}); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func (m *modelBed) applyPolicy(t *testing.T, p *networkingv1.NetworkPolicy) {
	t.Helper()
	ctx := context.Background()
	client := m.cp.Clientset.NetworkingV1().NetworkPolicies(p.Namespace)
	existing, err := client.Get(ctx, p.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		if _, err := client.Create(ctx, p.DeepCopy(), metav1.CreateOptions{}); err != nil {
			t.Fatalf("creating policy %s/%s: %v", p.Namespace, p.Name, err)
		}
	case err != nil:
		t.Fatalf("reading policy %s/%s: %v", p.Namespace, p.Name, err)
	default:
		existing.Spec = p.Spec
		if _, err := client.Update(ctx, existing, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("updating policy %s/%s: %v", p.Namespace, p.Name, err)
		}
	}
}

// applyClusterPolicy creates a ClusterNetworkPolicy or replaces its spec.
func (m *modelBed) applyClusterPolicy(t *testing.T, p *policyv1beta1.ClusterNetworkPolicy) {
	t.Helper()
	ctx := context.Background()
	var existing policyv1beta1.ClusterNetworkPolicy
	err := m.cp.Client.Get(ctx, client.ObjectKey{Name: p.Name}, &existing)
	switch {
	case apierrors.IsNotFound(err):
		if err := m.cp.Client.Create(ctx, p.DeepCopy()); err != nil {
			t.Fatalf("creating cluster network policy %s: %v", p.Name, err)
		}
	case err != nil:
		t.Fatalf("reading cluster network policy %s: %v", p.Name, err)
	default:
		existing.Spec = p.Spec
		if err := m.cp.Client.Update(ctx, &existing); err != nil {
			t.Fatalf("updating cluster network policy %s: %v", p.Name, err)
		}
	}
}

func (m *modelBed) doStep(t *testing.T, s step) {
	t.Helper()
	ctx := context.Background()
	if err := m.bed.FlushNeighbors(); err != nil {
		t.Fatal(err)
	}
	if s.apply != nil {
		for _, p := range s.apply(m) {
			m.applyPolicy(t, p)
		}
	}
	if s.applyCluster != nil {
		for _, p := range s.applyCluster(m) {
			m.applyClusterPolicy(t, p)
		}
	}
	for _, name := range s.removeCluster {
		if err := m.cp.Client.Delete(ctx, &policyv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
			t.Fatalf("deleting cluster network policy %s: %v", name, err)
		}
	}
	for _, key := range s.remove {
		ns, name, _ := strings.Cut(key, "/")
		if err := m.cp.Clientset.NetworkingV1().NetworkPolicies(ns).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatalf("deleting policy %s: %v", key, err)
		}
	}
	for ns, labels := range s.namespaceLabels {
		if err := m.bed.EnsureNamespace(ctx, ns, labels); err != nil {
			t.Fatal(err)
		}
	}
	for key, labels := range s.podLabels {
		ns, name, _ := strings.Cut(key, "/")
		if err := m.bed.SetPodLabels(ctx, ns, name, labels); err != nil {
			t.Fatal(err)
		}
	}
}

// expected returns the matrix the step expects for one probe spec.
func (m *modelBed) expected(s step, spec testbed.ProbeSpec) *testbed.Matrix {
	e := newExpectation(m.keys, string(spec.Proto), spec.Port)
	if s.expect != nil {
		s.expect(e)
	}
	out := testbed.NewMatrix(m.keys, false)
	for _, f := range m.keys {
		for _, to := range m.keys {
			out.Set(f, to, e.get(f, to))
		}
	}
	return out
}

// converge probes until every matrix equals its expectation, for at most
// 20 s, and returns the last observation.
func (m *modelBed) converge(s step) (map[testbed.ProbeSpec]*testbed.Matrix, []string) {
	return m.convergeWithin(s, 20*time.Second)
}

// convergeWithin is converge with another bound.
func (m *modelBed) convergeWithin(s step, bound time.Duration) (map[testbed.ProbeSpec]*testbed.Matrix, []string) {
	return m.convergeTo(func(spec testbed.ProbeSpec) *testbed.Matrix { return m.expected(s, spec) }, bound)
}

// convergeTo probes until every matrix equals want's, for at most bound,
// and returns the last observation and what differed in it.
func (m *modelBed) convergeTo(want func(testbed.ProbeSpec) *testbed.Matrix, bound time.Duration) (map[testbed.ProbeSpec]*testbed.Matrix, []string) {
	ctx := context.Background()
	deadline := time.Now().Add(bound)
	var observed map[testbed.ProbeSpec]*testbed.Matrix
	var failures []string
	for attempt := 0; attempt < 300; attempt++ {
		observed = map[testbed.ProbeSpec]*testbed.Matrix{}
		failures = nil
		for _, spec := range probeSpecs() {
			got := testbed.ProbeMatrix(ctx, m.pods, spec, 48)
			m.probes.Add(int64(len(m.keys) * len(m.keys)))
			observed[spec] = got
			if want := want(spec); !got.Equal(want) {
				failures = append(failures, fmt.Sprintf("%s:\n%s", spec, got.Diff(want)))
			}
		}
		if len(failures) == 0 || time.Now().After(deadline) {
			break
		}
		if os.Getenv("NFTPOL_DEBUG_CONVERGE") != "" {
			fmt.Fprintf(os.Stderr, "attempt %d at %s:\n%s\n", attempt, time.Now().Format("15:04:05.000"), strings.Join(failures, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	return observed, failures
}

// clusterState reads the cluster as the reference evaluator takes it.
func (m *modelBed) clusterState(t *testing.T) *reference.Cluster {
	t.Helper()
	state, err := reference.Read(context.Background(), m.cp.Client)
	if err != nil {
		t.Fatal(err)
	}
	return state
}

// checkEvaluator asserts that the reference evaluator predicts every
// observed cell.
func (m *modelBed) checkEvaluator(t *testing.T, observed map[testbed.ProbeSpec]*testbed.Matrix) {
	t.Helper()
	state := m.clusterState(t)
	for spec, got := range observed {
		if want := testbed.PredictMatrix(state, m.pods, spec); !got.Equal(want) {
			t.Errorf("%s: the reference evaluator predicts otherwise than observed:\n%s", spec, got.Diff(want))
		}
	}
}

func (m *modelBed) runCase(t *testing.T, c conformanceCase) {
	m.reset(t)
	for i, s := range c.steps {
		m.doStep(t, s)
		observed, failures := m.converge(s)
		if len(failures) > 0 {
			t.Fatalf("step %d (%s): matrices did not converge to the expectation:\n%s", i+1, s.name, strings.Join(failures, "\n"))
		}
		m.checkEvaluator(t, observed)
		for node, wants := range s.rulesetHas {
			listing := m.listTable(t, node)
			for _, w := range wants {
				if !strings.Contains(listing, w) {
					t.Errorf("step %d (%s): the table of the node of %s lacks %q:\n%s", i+1, s.name, node, w, listing)
				}
			}
		}
	}
}

// listTable lists our table on the node of a pod with the nft binary.
func (m *modelBed) listTable(t *testing.T, podKey string) string {
	t.Helper()
	node := m.bed.Node(m.bed.Pod(podKey).Node)
	return kerneltest.Nft(t, node.NetNSPath, "list", "table", "inet", "nftpol")
}

// TestConformance runs the upstream NetworkPolicy cases with real packets
// through two agents (reject mode, so denied probes fail fast).
func TestConformance(t *testing.T) {
	// Some cases check the ruleset as an operator reads it, with nft.
	kerneltest.Require(t, kerneltest.ControlPlane, kerneltest.NftBinary)
	m := startModel(t, e2ePrefix+"conf", "--deny-action", "reject")
	m.runCases(t, conformanceCases())
}

// TestConformanceLookupLayout runs the same cases with every isolation
// chain in the lookup layout (nft/lookup.go): the verdict maps decide,
// with real packets, as the walk of policy chains does.
func TestConformanceLookupLayout(t *testing.T) {
	kerneltest.Require(t, kerneltest.ControlPlane, kerneltest.NftBinary)
	m := startModel(t, e2ePrefix+"look", "--deny-action", "reject", "--lookup-min-policies", "1")
	m.runCases(t, conformanceCases())
}

// runCases runs each case as a subtest and logs what it took.
func (m *modelBed) runCases(t *testing.T, cases []conformanceCase) {
	start := time.Now()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { m.runCase(t, c) })
	}
	t.Logf("%d cases, %d probes in %s", len(cases), m.probes.Load(), time.Since(start).Round(time.Millisecond))
}

// TestDropMode runs a few cases with the default deny action (drop), where
// denied probes time out instead of being refused.
func TestDropMode(t *testing.T) {
	m := startModel(t, e2ePrefix+"drop")
	for _, c := range conformanceCases() {
		switch c.name {
		case "default-deny-all", "ports", "egress-cidr-with-except":
			t.Run(c.name, func(t *testing.T) { m.runCase(t, c) })
		}
	}
}
