package nft

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/selectors/selectorstest"
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
