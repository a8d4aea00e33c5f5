package nft

import (
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/selectors/selectorstest"
	"github.com/nftpol/nftpol/test/kerneltest"
)

// withAuditModes annotates some policies of cl for audit mode, and a few
// with a value nftpol does not know (which leaves them enforced).
func withAuditModes(c *selectorstest.Choices, cl *reference.Cluster) {
	mode := func() map[string]string {
		switch c.Intn(5) {
		case 0, 1:
			return map[string]string{selectors.ModeAnnotation: selectors.ModeAudit}
		case 2:
			return map[string]string{selectors.ModeAnnotation: selectorstest.Pick(c, "Audit", "dry-run", selectors.ModeEnforce)}
		}
		return nil
	}
	for _, np := range cl.Policies {
		np.Annotations = mode()
	}
	for _, cnp := range cl.ClusterPolicies {
		cnp.Annotations = mode()
	}
}

// auditHit is one would-deny counter a packet hit.
type auditHit struct {
	hop    int
	policy string
	dir    selectors.Direction
}

// checkAuditAgrees runs every packet of cl through the tables of the nodes
// it passes, as checkTablesAgree does, and holds the would-deny counters
// it hits against the evaluator: at each hop, for each policy P in audit
// mode and each side this node decides (egress where the source pod
// lives, ingress where the destination pod lives), the counter of P is
// hit exactly when the packet got through the real chains of this hop and
// of the hops before it, and the side with P enforced denies it.
func checkAuditAgrees(t *testing.T, cl *reference.Cluster, cfg Config) (hits int) {
	t.Helper()
	s := selectorstest.State(cl)
	rulesets := map[string]*Ruleset{}
	tables := map[string]*kernelTable{}
	for _, node := range selectorstest.Nodes() {
		m, _ := selectors.BuildModel(node, s)
		rulesets[node] = Compile(m, cfg)
		tables[node] = toKernel(rulesets[node])
	}
	audited := reference.AuditPolicies(cl)
	places := selectorstest.Places(cl)
	for _, pk := range selectorstest.Packets(cl) {
		actual := reference.Evaluate(cl, pk.Reference())
		src, srcIn := places[pk.Src.Unmap()]
		dst, dstIn := places[pk.Dst.Unmap()]
		var got, want []auditHit
		reached := true
		hops := selectorstest.Hops(places, pk)
		for h, hop := range hops {
			var trace []string
			ok, err := tables[hop.Node].run(string(hop.Hook), newWirePacket(pk), &trace)
			if err != nil {
				t.Fatalf("%s at %s/%s: %v", pk, hop.Node, hop.Hook, err)
			}
			for _, line := range trace {
				chain, text, _ := strings.Cut(line, ": ")
				if spec := rulesets[hop.Node].chains[chain]; spec != nil && strings.Contains(text, `comment "`+auditCommentPrefix) {
					got = append(got, auditHit{h, spec.audit, spec.dir})
				}
			}
			// The sides this hop decides, and whether its real chains
			// let the packet through.
			egressHere := srcIn && !src.IsNode && src.Node == hop.Node && h == 0
			ingressHere := dstIn && !dst.IsNode && dst.Node == hop.Node && h == len(hops)-1
			if egressHere && !actual.Egress.Allowed || ingressHere && !actual.Ingress.Allowed {
				reached = false
			}
			if reached {
				for _, p := range audited {
					av := reference.Audit(cl, pk.Reference(), p)
					if egressHere && av.SideWouldDeny(reference.Egress) {
						want = append(want, auditHit{h, p, selectors.Egress})
					}
					if ingressHere && av.SideWouldDeny(reference.Ingress) {
						want = append(want, auditHit{h, p, selectors.Ingress})
					}
				}
			}
			if !ok {
				break
			}
		}
		byKey := func(a, b auditHit) int {
			return strings.Compare(fmt.Sprint(a.hop, a.policy, a.dir), fmt.Sprint(b.hop, b.policy, b.dir))
		}
		slices.SortFunc(got, byKey)
		slices.SortFunc(want, byKey)
		if !slices.Equal(got, want) {
			var why strings.Builder
			for _, p := range audited {
				av := reference.Audit(cl, pk.Reference(), p)
				fmt.Fprintf(&why, "with %s enforced:\n%s\n", p, av.Enforced.Explain())
			}
			t.Fatalf("%s: would-deny counters hit %v, the evaluator says %v\nactual:\n%s\n%s\ntables:\n%s\ncluster:%s",
				pk, got, want, actual.Explain(), why.String(), describeTables(rulesets), selectorstest.Describe(cl))
		}
		hits += len(got)
	}
	return hits
}

// TestAuditAgreesWithEvaluator: with policies in audit mode, the compiled
// tables decide as the evaluator does with those policies left out, and
// count as would-deny exactly what the evaluator says each would deny.
func TestAuditAgreesWithEvaluator(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	hits, audited := 0, 0
	for i := 0; i < 300; i++ {
		c := selectorstest.RandomChoices(r, 1024)
		cl := selectorstest.RandomCluster(c)
		cfg := configFor(c)
		withAuditModes(c, cl)
		audited += len(reference.AuditPolicies(cl))
		checkTablesAgree(t, cl, cfg)
		hits += checkAuditAgrees(t, cl, cfg)
	}
	// A generator that never draws a would-deny proves nothing.
	if audited == 0 || hits == 0 {
		t.Fatalf("300 clusters drew %d policies in audit mode and %d would-deny hits", audited, hits)
	}
	t.Logf("300 clusters: %d policies in audit mode, %d would-deny counter hits, all as the evaluator says", audited, hits)
}

// FuzzAuditAgreesWithEvaluator is TestAuditAgreesWithEvaluator on the
// fuzzer's choices.
func FuzzAuditAgreesWithEvaluator(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c := selectorstest.NewChoices(data)
		cl := selectorstest.RandomCluster(c)
		cfg := configFor(c)
		withAuditModes(c, cl)
		checkTablesAgree(t, cl, cfg)
		checkAuditAgrees(t, cl, cfg)
	})
}

// auditModel is everyKindModel with policies in audit mode: a
// NetworkPolicy on a pod only ClusterNetworkPolicies select (x/c) and on
// one another NetworkPolicy isolates (x/e, egress), and an Admin
// ClusterNetworkPolicy on x/a next to the NetworkPolicy (two slots).
func auditModel() *selectors.Model {
	m := everyKindModel()
	m.Policies = append(m.Policies, selectors.PolicyRules{Key: "x/audit-np", HasIngress: true, HasEgress: true, Audit: true,
		Ingress: []selectors.Rule{{Peers: selectors.PeerMatch{Sets: []string{"pods-b"}},
			Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: 80}}}}},
		Egress: []selectors.Rule{{Peers: selectors.PeerMatch{All: true}, Ports: selectors.PortMatch{Named: "named"}}}})
	m.ClusterPolicies = append(m.ClusterPolicies, selectors.ClusterPolicyRules{Name: "audit-admin", Tier: selectors.TierAdmin, Priority: 0, Audit: true,
		Ingress: []selectors.ClusterRule{
			{Action: selectors.ActionDeny, Peers: selectors.PeerMatch{Sets: []string{"cidr"}}, Ports: selectors.PortMatch{All: true}},
			{Index: 1, Action: selectors.ActionPass, Peers: selectors.PeerMatch{All: true}, Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolUDP, First: 53, Last: 53}}}},
		}})
	for i := range m.Pods {
		switch m.Pods[i].Key {
		case "x/a":
			m.Pods[i].Audit[selectors.Ingress] = []string{"audit-admin", "x/audit-np"}
		case "x/c":
			m.Pods[i].Audit[selectors.Ingress] = []string{"x/audit-np"}
		case "x/e":
			m.Pods[i].Audit[selectors.Egress] = []string{"x/audit-np"}
		}
	}
	return m
}

// enforcedAuditModel is auditModel with its policies enforced.
func enforcedAuditModel() *selectors.Model {
	m := auditModel()
	for i := range m.Policies {
		m.Policies[i].Audit = false
	}
	for i := range m.ClusterPolicies {
		m.ClusterPolicies[i].Audit = false
	}
	for i := range m.Pods {
		p := &m.Pods[i]
		for _, dir := range selectors.Directions {
			for _, name := range p.Audit[dir] {
				if strings.Contains(name, "/") {
					if dir == selectors.Egress {
						p.Egress = slices.Sorted(slices.Values(append(p.Egress, name)))
					} else {
						p.Ingress = slices.Sorted(slices.Values(append(p.Ingress, name)))
					}
				} else {
					p.Cluster[dir].Admin = append([]string{name}, p.Cluster[dir].Admin...) // priority 0: first
				}
			}
			p.Audit[dir] = nil
		}
	}
	return m
}

// TestAuditTableInKernel commits a table with policies in audit mode to
// a kernel, reads it back exactly (every audit rule decodes to itself),
// loads its `nft -f` text as the same table, then switches the policies
// to enforced and back, one commit each, verified each time.
func TestAuditTableInKernel(t *testing.T) {
	for _, cfg := range []Config{{Deny: DenyDrop}, {Deny: DenyReject, LogDenied: true, LogGroup: 5, LogRate: 7}} {
		t.Run(string(cfg.Deny), func(t *testing.T) {
			kerneltest.Require(t, kerneltest.NftBinary)
			ns := kerneltest.Netns(t, netnsPrefix+"au")
			cfg.Table, cfg.NetNSPath = "nftpol", ns
			n := newTestNode(t, cfg)
			audit := n.compiler.Compile(auditModel())
			auditChains := 0
			for name, c := range audit.chains {
				if c.audit == "" && !strings.HasPrefix(name, "audit") && !strings.HasPrefix(name, auditChainPrefix) {
					continue
				}
				auditChains++
				for _, r := range c.rules {
					want := r
					want.comment = ""
					if got := decodeRule(r.exprs(nil), nil); got != want {
						t.Fatalf("chain %s: %s decodes as %s", name, want.String(), got.String())
					}
				}
			}
			if auditChains == 0 {
				t.Fatal("the audit model compiled no audit chain")
			}
			for i, m := range []*selectors.Model{auditModel(), enforcedAuditModel(), auditModel(), &selectors.Model{}, auditModel()} {
				st, err := n.Sync(m)
				if err != nil {
					t.Fatalf("commit %d: %v", i, err)
				}
				if err := n.Verify(); err != nil {
					t.Fatalf("commit %d reads back otherwise: %v", i, err)
				}
				t.Logf("commit %d: %d chains, %d rules, %d sets (one transaction)", i, st.Chains, st.Rules, st.Sets)
			}
			listing := kerneltest.Nft(t, ns, "list", "table", "inet", "nftpol")
			for _, want := range []string{"chain audit0-forward-ingress", "chain audit1-forward-ingress", `log prefix "nftpol-would-deny-ingress x/audit-np"`, `comment "audit:audit-admin ingress"`} {
				if want == `log prefix "nftpol-would-deny-ingress x/audit-np"` && !cfg.LogDenied {
					continue
				}
				if !strings.Contains(listing, want) {
					t.Errorf("the table lacks %q:\n%s", want, listing)
				}
			}

			// `nftpol dump` names the audited policy of each hypothesis.
			back, err := n.ReadTable()
			if err != nil {
				t.Fatal(err)
			}
			dump := back.String()
			if testing.Verbose() {
				t.Logf("nftpol dump of the audit table:\n%s", dump)
			}
			for _, p := range []string{"x/audit-np", "audit-admin"} {
				if !strings.Contains(dump, "# audit mode: what "+p+" would deny") {
					t.Errorf("the dump does not name %s's hypotheses:\n%s", p, dump)
				}
			}

			// The nft text of the same table loads as the same table.
			ns2 := kerneltest.Netns(t, netnsPrefix+"au")
			file := filepath.Join(t.TempDir(), "table.nft")
			if err := os.WriteFile(file, []byte(audit.NftText()), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("ip", "netns", "exec", filepath.Base(ns2), "nft", "-f", file).CombinedOutput(); err != nil {
				t.Fatalf("nft -f: %v: %s", err, out)
			}
			cfg2 := cfg
			cfg2.NetNSPath = ns2
			e2 := newTestNode(t, cfg2)
			e2.committed = audit
			if err := e2.Verify(); err != nil {
				t.Fatalf("the table nft loaded is not the desired one: %v", err)
			}
		})
	}
}
