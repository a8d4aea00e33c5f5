package main

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/test/kerneltest"
)

// explainPolicyTable is a real nftables table in a network namespace
// the test creates, for the pods a and b of namespace e on node n1.
type explainPolicyTable struct {
	state    *selectors.State
	enforcer *nft.Enforcer
}

func newExplainPolicyTable(t *testing.T, netns string) *explainPolicyTable {
	t.Helper()
	ns := kerneltest.Netns(t, netns)
	created := time.Unix(1000, 0)
	enforcer, err := nft.NewEnforcer(nft.Config{Table: "nftpol", NetNSPath: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { enforcer.Close() })
	return &explainPolicyTable{enforcer: enforcer, state: &selectors.State{
		Namespaces: []*selectors.Namespace{selectors.NamespaceFromObject(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "e", Labels: map[string]string{"ns": "e"}}})},
		Pods: []*selectors.Pod{
			selectors.PodFromObject(explainPod("a", created, "10.0.0.1", "fd00::1")),
			selectors.PodFromObject(explainPod("b", created, "10.0.0.2", "fd00::2")),
		},
	}}
}

// commit commits the table of node n1 with policies.
func (x *explainPolicyTable) commit(t *testing.T, policies ...*networkingv1.NetworkPolicy) {
	t.Helper()
	s := *x.state
	s.Policies = policies
	c, err := nft.NewCompiler(x.enforcer.Config())
	if err != nil {
		t.Fatal(err)
	}
	m, _ := selectors.BuildModel("n1", &s)
	if _, err := x.enforcer.Commit(c.Compile(m)); err != nil {
		t.Fatal(err)
	}
}

// explain asks explainPolicy about key against the committed table, the
// cluster holding policies.
func (x *explainPolicyTable) explain(t *testing.T, key string, policies ...*networkingv1.NetworkPolicy) string {
	t.Helper()
	committed, err := x.enforcer.ReadTable()
	if err != nil {
		t.Fatal(err)
	}
	s := *x.state
	s.Policies = policies
	out, err := explainPolicy(&s, "n1", key, x.enforcer.Config(), committed)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestExplainPolicyReadsTheKernel commits tables into a real nftables
// table of a network namespace and asks explainPolicy about one policy:
// in force when the table holds everything it adds, and every one of its
// pieces listed as not committed when the table was committed without
// it, while the other policy stays in force.
func TestExplainPolicyReadsTheKernel(t *testing.T) {
	x := newExplainPolicyTable(t, "nftpol-explainpol")
	allowB := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "e", Name: "allow-b"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "a"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}}}}}}}}
	denyB := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "e", Name: "deny-b"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	commit := func(policies ...*networkingv1.NetworkPolicy) { t.Helper(); x.commit(t, policies...) }
	explainNow := func(key string) string { t.Helper(); return x.explain(t, key, allowB, denyB) }

	commit(allowB, denyB)
	out := explainNow("e/allow-b")
	t.Logf("both committed:\n%s", out)
	if !strings.HasPrefix(out, "policy e/allow-b is in force on node n1: all ") || strings.Contains(out, "NOT committed") {
		t.Errorf("want e/allow-b in force:\n%s", out)
	}

	commit(denyB) // the table without allow-b
	out = explainNow("e/allow-b")
	t.Logf("allow-b not committed:\n%s", out)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if !strings.Contains(lines[0], "is NOT fully in force") {
		t.Errorf("want e/allow-b not in force:\n%s", out)
	}
	for _, l := range lines[1:] {
		if !strings.Contains(l, "NOT committed") {
			t.Errorf("a piece of the missing policy reported committed: %s", l)
		}
	}
	if out := explainNow("e/deny-b"); !strings.Contains(out, "is in force") {
		t.Errorf("want e/deny-b in force:\n%s", out)
	}
}

// TestExplainPolicyAudit: a policy in audit mode is said to be so, with
// its hypothesis chains and counters listed as committed or not, read
// from a real table.
func TestExplainPolicyAudit(t *testing.T) {
	x := newExplainPolicyTable(t, "nftpol-explainaud")
	auditB := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "e", Name: "audit-b", Annotations: map[string]string{selectors.ModeAnnotation: selectors.ModeAudit}},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "b"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	tests := []struct {
		name      string
		committed []*networkingv1.NetworkPolicy // what the table was committed with
		wantFirst string                        // the start of the first line
		wantTail  string                        // the end of the first line
		wantMark  string                        // the mark of every piece
	}{
		{name: "committed", committed: []*networkingv1.NetworkPolicy{auditB},
			wantFirst: "policy e/audit-b is in audit mode (nftpol.io/mode=audit) on node n1: it denies nothing; all ",
			wantTail:  " pieces of its hypothesis chains and counters are committed", wantMark: "  committed    "},
		{name: "not committed", committed: nil,
			wantFirst: "policy e/audit-b is in audit mode (nftpol.io/mode=audit) on node n1: it denies nothing; ",
			wantTail:  " pieces of its hypothesis chains and counters are not committed", wantMark: "NOT committed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x.commit(t, tt.committed...)
			out := x.explain(t, "e/audit-b", auditB)
			t.Logf("\n%s", out)
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if !strings.HasPrefix(lines[0], tt.wantFirst) || !strings.HasSuffix(lines[0], tt.wantTail) {
				t.Errorf("first line %q, want %q ... %q", lines[0], tt.wantFirst, tt.wantTail)
			}
			hypothesis := false
			for _, l := range lines[1:] {
				if !strings.Contains(l, tt.wantMark) {
					t.Errorf("piece not marked %q: %s", tt.wantMark, l)
				}
				hypothesis = hypothesis || strings.Contains(l, " aud-")
			}
			if !hypothesis {
				t.Errorf("no hypothesis chain (aud-) among the pieces:\n%s", out)
			}
		})
	}
}
