package test

import (
	"context"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/test/testbed"
)

// auditCase is one policy put in audit mode on the model, over an
// enforced background.
type auditCase struct {
	name string
	// policy is the audited policy's name as the metrics and the log name
	// it: "namespace/name" for a NetworkPolicy, the name for a
	// ClusterNetworkPolicy.
	policy string
	np     *networkingv1.NetworkPolicy
	cnp    *policyv1beta1.ClusterNetworkPolicy
}

// TestAuditMode puts a NetworkPolicy and then an Admin
// ClusterNetworkPolicy in audit mode (annotation nftpol.io/mode: audit) on
// the model, with two agents, real TCP and UDP over IPv4 and IPv6:
//
//   - the matrices with the policy in audit mode are those without it;
//   - the would-deny counters of each agent grow by exactly the packets the
//     evaluator says the policy would deny on that node's side, and the
//     agents log exactly one would-deny line for each of them;
//   - removing the annotation enforces the policy: the matrix becomes the
//     evaluator's with it enforced, which differs from the audit matrix in
//     exactly the cells the evaluator called would-deny, and probes during
//     the switch only ever see a cell's audit or enforced value.
func TestAuditMode(t *testing.T) {
	m := startModel(t, e2ePrefix+"au", "--deny-action", "reject", "--log-denied", "--log-denied-rate", "100000")
	nsX, nsY, nsZ := selPtr("ns", "x"), selPtr("ns", "y"), selPtr("ns", "z")
	cases := []auditCase{
		{name: "NetworkPolicy", policy: "x/audit-np",
			// x/a: ingress only from y on TCP/80, egress only to z.
			np: withEgress(withIngress(policy("x", "audit-np", sel("pod", "a"), ingressEgress),
				networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{nsPeer(nsY)}, Ports: []networkingv1.NetworkPolicyPort{port(corev1.ProtocolTCP, 80)}}),
				to(nsPeer(nsZ)))},
		{name: "ClusterNetworkPolicy", policy: "audit-cnp",
			// z: Admin denies ingress from y, and egress to x on TCP and
			// UDP 81, passes egress to y (into the NetworkPolicy tier).
			cnp: withEgressRules(withIngressRules(clusterPolicy("audit-cnp", policyv1beta1.AdminTier, 10, nsZ),
				cnpFrom(policyv1beta1.ClusterNetworkPolicyRuleActionDeny, fromNamespaces(nsY))),
				egProtocols(cnpTo(policyv1beta1.ClusterNetworkPolicyRuleActionDeny, toNamespaces(nsX)), protoPort("TCP", 81), protoPort("UDP", 81)),
				cnpTo(policyv1beta1.ClusterNetworkPolicyRuleActionPass, toNamespaces(nsY)))},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { m.runAuditCase(t, c) })
	}
}

// auditBackground is enforced in every case: y/b accepts ingress from x
// only, and z/c is egress-isolated to y, so that would-deny cells meet
// real denies on both sides and on both nodes.
func auditBackground() []*networkingv1.NetworkPolicy {
	return []*networkingv1.NetworkPolicy{
		withIngress(policy("y", "only-x", sel("pod", "b"), ingressOnly), from(nsPeer(selPtr("ns", "x")))),
		withEgress(policy("z", "c-to-y", sel("pod", "c"), egressOnly), to(nsPeer(selPtr("ns", "y")))),
	}
}

func (m *modelBed) runAuditCase(t *testing.T, c auditCase) {
	ctx := context.Background()
	m.reset(t)
	for _, p := range auditBackground() {
		m.applyPolicy(t, p)
	}
	without := m.convergeToEvaluator(t, "background only")

	// The policy in audit mode: nothing changes on the wire.
	if c.np != nil {
		np := c.np.DeepCopy()
		np.Annotations = map[string]string{selectors.ModeAnnotation: selectors.ModeAudit}
		if _, err := m.cp.Clientset.NetworkingV1().NetworkPolicies(np.Namespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	} else {
		cnp := c.cnp.DeepCopy()
		cnp.Annotations = map[string]string{selectors.ModeAnnotation: selectors.ModeAudit}
		if err := m.cp.Client.Create(ctx, cnp); err != nil {
			t.Fatal(err)
		}
	}
	state := m.clusterState(t)
	if got := reference.AuditPolicies(state); !slices.Equal(got, []string{c.policy}) {
		t.Fatalf("the evaluator reads %v in audit mode, want [%s]", got, c.policy)
	}
	m.waitAuditCounters(t, c.policy)
	audit := m.convergeToEvaluator(t, c.policy+" in audit mode")
	for spec, got := range audit {
		if !got.Equal(without[spec]) {
			t.Errorf("%s: the matrix with %s in audit mode differs from the one without it:\n%s", spec, c.policy, got.Diff(without[spec]))
		}
	}

	// One round of probes, counted and logged. The denied-flow log
	// remembers a flow for 10 s: wait that out so the round's flows are
	// new to it.
	time.Sleep(10500 * time.Millisecond)
	marks := map[string]int{}
	before := map[string]map[string]float64{}
	for node, a := range m.agents {
		marks[node] = len(a.Log())
		before[node] = scrape(t, "http://"+a.MetricsAddr+"/metrics")
	}
	want := m.expectedWouldDeny(state, c.policy)
	for _, spec := range auditSpecs() {
		if got := testbed.ProbeMatrix(ctx, m.pods, spec, auditParallel); !got.Equal(audit[spec]) {
			t.Fatalf("%s: the counted round saw another matrix:\n%s", spec, got.Diff(audit[spec]))
		}
	}
	// Counters: per node and direction, exactly the packets expected.
	for node, a := range m.agents {
		after := scrape(t, "http://"+a.MetricsAddr+"/metrics")
		for series, v := range after {
			if strings.HasPrefix(series, "nftpol_policy_audit_would_deny_packets_total") {
				t.Logf("%s scrape: %s %v", node, series, v)
			}
		}
		for _, dir := range []string{"ingress", "egress"} {
			series := fmt.Sprintf(`nftpol_policy_audit_would_deny_packets_total{direction=%q,policy=%q}`, dir, c.policy)
			got := after[series] - before[node][series]
			if exp := want.count(node, dir); got != float64(exp) {
				t.Errorf("%s on %s grew by %v, the evaluator names %d packets:\n%s", series, node, got, exp, strings.Join(want.lines(node, dir), "\n"))
			}
			t.Logf("%s %s: %v would-deny packets (evaluator: %d)", node, series, got, want.count(node, dir))
		}
	}
	// Log lines: one per would-deny packet, as the evaluator names them.
	var got []string
	for attempt := 0; attempt < 50; attempt++ {
		got = nil
		for node, a := range m.agents {
			got = append(got, wouldDenyLines(node, a.Log(), marks[node])...)
		}
		if len(got) >= len(want.all) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // a line too many would come now
	got = nil
	for node, a := range m.agents {
		got = append(got, wouldDenyLines(node, a.Log(), marks[node])...)
	}
	sort.Strings(got)
	if !slices.Equal(got, want.all) {
		t.Errorf("would-deny log lines (- evaluator only, + logged only):\n%s", lineDiff(strings.Join(want.all, "\n"), strings.Join(got, "\n")))
	}
	t.Logf("%d would-deny log lines, as the evaluator names them", len(got))
	for node, a := range m.agents {
		for _, line := range strings.Split(a.Log()[marks[node]:], "\n") {
			if strings.Contains(line, `"would-deny"`) {
				t.Logf("%s log: %s", node, line)
				break
			}
		}
	}
	if len(want.all) == 0 {
		t.Fatal("the case has no would-deny cell: it proves nothing")
	}

	// Enforce: remove the annotation. Probes during the switch see each
	// cell's audit value or its enforced value, never a third.
	m.setMode(t, c, "")
	enforcedState := m.clusterState(t)
	if got := reference.AuditPolicies(enforcedState); len(got) != 0 {
		t.Fatalf("the evaluator still reads %v in audit mode", got)
	}
	switchSpec := auditSpecs()[0]
	enforcedMatrix := testbed.PredictMatrix(enforcedState, m.pods, switchSpec)
	seen, done := m.probeDuringSwitch(t, switchSpec, audit[switchSpec], enforcedMatrix)
	if !done {
		t.Errorf("probes did not see %s enforced within 30 s of removing the annotation", c.policy)
	}
	enforced := m.convergeToEvaluator(t, c.policy+" enforced")
	t.Logf("switch to enforced: %d probes during it, each the audit or the enforced value", seen)
	// Enforcing denies exactly what the evaluator called would-deny.
	for _, spec := range auditSpecs() {
		for _, from := range m.pods {
			for _, to := range m.pods {
				av := reference.Audit(state, packetOf(from, to, spec), c.policy)
				wantCell := audit[spec].Get(from.Key(), to.Key()) && !av.WouldDeny()
				if enforced[spec].Get(from.Key(), to.Key()) != wantCell {
					t.Errorf("%s %s -> %s: enforced %v, audit %v, evaluator would-deny %v", spec, from.Key(), to.Key(),
						enforced[spec].Get(from.Key(), to.Key()), audit[spec].Get(from.Key(), to.Key()), av.WouldDeny())
				}
			}
		}
	}
	// Back to audit mode: the matrix is the one without the policy again.
	m.setMode(t, c, selectors.ModeAudit)
	m.convergeToEvaluator(t, c.policy+" in audit mode again")
}

// auditSpecs are probeSpecs with a longer timeout: a probe that times out
// on a loaded machine would read as a denied cell, and a SYN sent again
// as a second packet counted.
func auditSpecs() []testbed.ProbeSpec {
	specs := probeSpecs()
	for i := range specs {
		specs[i].Timeout = 3 * time.Second
	}
	return specs
}

// auditParallel bounds the probes in flight, for the same reason.
const auditParallel = 12

// convergeToEvaluator probes until every matrix is the evaluator's for the
// cluster as it is (at most 60 s), and returns them.
func (m *modelBed) convergeToEvaluator(t *testing.T, what string) map[testbed.ProbeSpec]*testbed.Matrix {
	t.Helper()
	state := m.clusterState(t)
	deadline := time.Now().Add(60 * time.Second)
	var failures []string
	for attempt := 0; attempt < 100; attempt++ {
		observed := map[testbed.ProbeSpec]*testbed.Matrix{}
		failures = nil
		for _, spec := range auditSpecs() {
			got := testbed.ProbeMatrix(context.Background(), m.pods, spec, auditParallel)
			observed[spec] = got
			if want := testbed.PredictMatrix(state, m.pods, spec); !got.Equal(want) {
				failures = append(failures, fmt.Sprintf("%s:\n%s", spec, got.Diff(want)))
			}
		}
		if len(failures) == 0 {
			return observed
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("%s: the matrices did not converge to the evaluator's:\n%s", what, strings.Join(failures, "\n"))
	return nil
}

// waitAuditCounters waits until an agent exports the would-deny counter
// of policy: its table holds the audit chains.
func (m *modelBed) waitAuditCounters(t *testing.T, policy string) {
	t.Helper()
	needle := fmt.Sprintf(`policy=%q`, policy)
	for attempt := 0; attempt < 100; attempt++ {
		for _, a := range m.agents {
			for series := range scrape(t, "http://"+a.MetricsAddr+"/metrics") {
				if strings.HasPrefix(series, "nftpol_policy_audit_would_deny_packets_total{") && strings.Contains(series, needle) {
					return
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no agent exports a would-deny counter for %s after 10 s", policy)
}

// setMode sets (or, with "", removes) the mode annotation of the case's
// policy: one update of the object.
func (m *modelBed) setMode(t *testing.T, c auditCase, mode string) {
	t.Helper()
	ctx := context.Background()
	var obj client.Object
	if c.np != nil {
		obj = &networkingv1.NetworkPolicy{}
		if err := m.cp.Client.Get(ctx, client.ObjectKey{Namespace: c.np.Namespace, Name: c.np.Name}, obj); err != nil {
			t.Fatal(err)
		}
	} else {
		obj = &policyv1beta1.ClusterNetworkPolicy{}
		if err := m.cp.Client.Get(ctx, client.ObjectKey{Name: c.cnp.Name}, obj); err != nil {
			t.Fatal(err)
		}
	}
	a := obj.GetAnnotations()
	if a == nil {
		a = map[string]string{}
	}
	if mode == "" {
		delete(a, selectors.ModeAnnotation)
	} else {
		a[selectors.ModeAnnotation] = mode
	}
	obj.SetAnnotations(a)
	if err := m.cp.Client.Update(ctx, obj); err != nil {
		t.Fatalf("setting the mode of %s: %v", c.policy, err)
	}
}

// probeDuringSwitch probes spec's matrix round after round until it is
// enforced (at most 30 s) and fails on any cell that is neither its audit
// nor its enforced value. It returns the number of probes and whether the
// enforced matrix was seen.
func (m *modelBed) probeDuringSwitch(t *testing.T, spec testbed.ProbeSpec, audit, enforced *testbed.Matrix) (int, bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	probes := 0
	for round := 0; round < 200 && time.Now().Before(deadline); round++ {
		got := testbed.ProbeMatrix(context.Background(), m.pods, spec, auditParallel)
		probes += len(m.pods) * len(m.pods)
		for _, from := range m.keys {
			for _, to := range m.keys {
				v := got.Get(from, to)
				if v != audit.Get(from, to) && v != enforced.Get(from, to) {
					t.Errorf("round %d: %s -> %s is %v, neither the audit (%v) nor the enforced value", round, from, to, v, audit.Get(from, to))
				}
			}
		}
		if got.Equal(enforced) {
			return probes, true
		}
	}
	return probes, false
}

func packetOf(from, to *testbed.Pod, spec testbed.ProbeSpec) reference.Packet {
	proto := corev1.ProtocolTCP
	if spec.Proto == testbed.UDP {
		proto = corev1.ProtocolUDP
	}
	return reference.Packet{Src: from.Addr(spec.Family), Dst: to.Addr(spec.Family), Protocol: proto, Port: int32(spec.Port)}
}

// wouldDenyExpectation is what the evaluator says one round of probes
// makes the agents count and log.
type wouldDenyExpectation struct {
	// byNodeDir lists, per "node direction", one line per packet.
	byNodeDir map[string][]string
	// all is every line, sorted.
	all []string
}

func (w *wouldDenyExpectation) count(node, dir string) int { return len(w.byNodeDir[node+" "+dir]) }
func (w *wouldDenyExpectation) lines(node, dir string) []string {
	return w.byNodeDir[node+" "+dir]
}

// expectedWouldDeny walks every cell of every probe spec: a side is
// counted on the node that decides it (egress where the source pod runs,
// ingress where the destination runs) when the packet gets through what
// that node enforces and the side with the policy enforced denies it.
// A probe's connection sends one new packet (reject mode answers a denied
// one at once), so one cell counts one packet per side.
func (m *modelBed) expectedWouldDeny(state *reference.Cluster, policy string) *wouldDenyExpectation {
	w := &wouldDenyExpectation{byNodeDir: map[string][]string{}}
	for _, spec := range auditSpecs() {
		for _, from := range m.pods {
			for _, to := range m.pods {
				if from == to {
					continue
				}
				av := reference.Audit(state, packetOf(from, to, spec), policy)
				sameNode := from.Node == to.Node
				egressReached := av.Actual.Egress.Allowed && (!sameNode || av.Actual.Ingress.Allowed)
				if egressReached && av.SideWouldDeny(reference.Egress) {
					w.add(from.Node, "egress", from, to, spec, policy)
				}
				if av.Actual.Allowed && av.SideWouldDeny(reference.Ingress) {
					w.add(to.Node, "ingress", from, to, spec, policy)
				}
			}
		}
	}
	sort.Strings(w.all)
	return w
}

func (w *wouldDenyExpectation) add(node, dir string, from, to *testbed.Pod, spec testbed.ProbeSpec, policy string) {
	line := wouldDenyLine(node, dir, from.Key(), to.Key(), from.Addr(spec.Family), string(spec.Proto), spec.Port, policy)
	w.byNodeDir[node+" "+dir] = append(w.byNodeDir[node+" "+dir], line)
	w.all = append(w.all, line)
}

func wouldDenyLine(node, dir, src, dst string, srcIP netip.Addr, proto string, port int, policy string) string {
	return fmt.Sprintf("%s %s %s -> %s IPv%d %s/%d %s", node, dir, src, dst, map[bool]int{true: 4, false: 6}[srcIP.Is4()], proto, port, policy)
}

var logField = regexp.MustCompile(`"?(\w+)"?[=:]\s*("[^"]*"|[^\s,}]+)`)

// wouldDenyLines reads the agent's would-deny lines after offset in
// wouldDenyLine's form.
func wouldDenyLines(node, log string, offset int) []string {
	var out []string
	for _, line := range strings.Split(log[offset:], "\n") {
		if !strings.Contains(line, `"would-deny"`) {
			continue
		}
		f := map[string]string{}
		for _, kv := range logField.FindAllStringSubmatch(line, -1) {
			f[kv[1]] = strings.Trim(kv[2], `"`)
		}
		ip, _ := netip.ParseAddr(f["srcIP"])
		var port int
		fmt.Sscan(f["port"], &port)
		out = append(out, wouldDenyLine(node, f["direction"], f["src"], f["dst"], ip, f["protocol"], port, f["policy"]))
	}
	return out
}
