package selectors_test

import (
	"math/rand"
	"net/netip"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// decideByModel decides a packet the way the nftables tables do, from the
// Models of the nodes it passes: at each hop, the source pod's egress if it
// lives on that node, and on forward the destination pod's ingress if it
// does.
func decideByModel(models map[string]*selectors.Model, places map[netip.Addr]selectorstest.Place, p selectorstest.Packet) bool {
	side := func(m *selectors.Model, dir selectors.Direction, own netip.Addr, remote netip.Addr) bool {
		for i := range m.Pods {
			pr := &m.Pods[i]
			if !containsAddr(pr.IPs, own) {
				continue
			}
			return podSideAllows(m, pr, dir, remote, p)
		}
		return true // not a pod of this node
	}
	for _, hop := range selectorstest.Hops(places, p) {
		m := models[hop.Node]
		if !side(m, selectors.Egress, p.Src, p.Dst) {
			return false
		}
		if hop.Hook == selectorstest.HookForward && !side(m, selectors.Ingress, p.Dst, p.Src) {
			return false
		}
	}
	return true
}

// podSideAllows decides one side at a local pod by the tiers the Model
// documents: Admin (first matching rule decides, Pass leaves the tier),
// the NetworkPolicy tier when a policy isolates the pod, Baseline, allow.
func podSideAllows(m *selectors.Model, pr *selectors.PodRules, dir selectors.Direction, remote netip.Addr, p selectorstest.Packet) bool {
	tier := func(names []string) (decided, allow bool) {
		for _, name := range names {
			for ci := range m.ClusterPolicies {
				cp := &m.ClusterPolicies[ci]
				if cp.Name != name {
					continue
				}
				for _, r := range cp.Rules(dir) {
					if !modelRuleMatches(m, selectors.Rule{Peers: r.Peers, Ports: r.Ports}, remote, p) {
						continue
					}
					switch r.Action {
					case selectors.ActionAccept:
						return true, true
					case selectors.ActionDeny:
						return true, false
					}
					return false, false // Pass
				}
			}
		}
		return false, false
	}
	if decided, allow := tier(pr.Cluster[dir].Admin); decided {
		return allow
	}
	if keys := pr.Isolating(dir); len(keys) > 0 {
		for _, k := range keys {
			for _, r := range policyRules(m, k, dir) {
				if modelRuleMatches(m, r, remote, p) {
					return true
				}
			}
		}
		return false
	}
	if decided, allow := tier(pr.Cluster[dir].Baseline); decided {
		return allow
	}
	return true
}

func containsAddr(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

func policyRules(m *selectors.Model, key string, dir selectors.Direction) []selectors.Rule {
	for _, pr := range m.Policies {
		if pr.Key == key {
			if dir == selectors.Ingress {
				return pr.Ingress
			}
			return pr.Egress
		}
	}
	return nil
}

func modelRuleMatches(m *selectors.Model, r selectors.Rule, remote netip.Addr, p selectorstest.Packet) bool {
	peerOK := r.Peers.All
	for _, id := range r.Peers.Sets {
		for _, s := range m.AddrSets {
			if s.ID != id {
				continue
			}
			if containsAddr(s.Addrs, remote) {
				peerOK = true
			}
			for _, rg := range s.Ranges {
				if rg.First.BitLen() == remote.BitLen() && rg.First.Compare(remote) <= 0 && remote.Compare(rg.Last) <= 0 {
					peerOK = true
				}
			}
		}
	}
	if !peerOK {
		return false
	}
	if r.Ports.All {
		return true
	}
	for _, pr := range r.Ports.Ranges {
		if pr.Protocol == p.Protocol && pr.First <= p.Port && p.Port <= pr.Last {
			return true
		}
	}
	for _, s := range m.PortSets {
		if s.ID != r.Ports.Named {
			continue
		}
		for _, e := range s.Entries {
			if e.Addr == p.Dst && e.Protocol == p.Protocol && e.Port == p.Port {
				return true
			}
		}
	}
	return false
}

// checkAgreement compares the model interpreter with the reference
// evaluator on every packet selectorstest.Packets lists. The builder reads
// the cluster through its own conversion (selectorstest.State), the
// evaluator reads the API objects.
func checkAgreement(t *testing.T, cl *reference.Cluster) {
	t.Helper()
	s := selectorstest.State(cl)
	models := map[string]*selectors.Model{}
	for _, node := range selectorstest.Nodes() {
		m, _ := selectors.BuildModel(node, s)
		models[node] = m
	}
	places := selectorstest.Places(cl)
	for _, pk := range selectorstest.Packets(cl) {
		want := reference.Evaluate(cl, pk.Reference())
		if got := decideByModel(models, places, pk); got != want.Allowed {
			t.Fatalf("model says %v, evaluator says %v for %s\n%s\ncluster:%s",
				got, want.Allowed, pk, want.Explain(), selectorstest.Describe(cl))
		}
	}
}

func TestModelAgreesWithEvaluator(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		checkAgreement(t, selectorstest.RandomCluster(selectorstest.RandomChoices(r, 1024)))
	}
}

// FuzzModelAgreesWithEvaluate: the fuzzer's bytes are the generator's
// choices (selectorstest.Choices), so coverage guidance steers the
// clusters it draws.
func FuzzModelAgreesWithEvaluate(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		checkAgreement(t, selectorstest.RandomCluster(selectorstest.NewChoices(data)))
	})
}
