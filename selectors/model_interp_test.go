package selectors_test

import (
	"fmt"
	"math/rand"
	"net/netip"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// decideByModel decides a packet the way the nftables tables do, from the
// Models of the nodes it passes: at each hop, the source pod's egress if it
// lives on that node, and on forward the destination pod's ingress if it
// does.
func decideByModel(models map[string]*selectors.Model, places map[netip.Addr]selectorstest.Place, p selectors.Packet) bool {
	side := func(m *selectors.Model, dir selectors.Direction, own netip.Addr, remote netip.Addr) bool {
		for i := range m.Pods {
			pr := &m.Pods[i]
			if !containsAddr(pr.IPs, own) {
				continue
			}
			keys := pr.Ingress
			if dir == selectors.Egress {
				keys = pr.Egress
			}
			if len(keys) == 0 {
				return true
			}
			for _, k := range keys {
				for _, r := range policyRules(m, k, dir) {
					if modelRuleMatches(m, r, remote, p) {
						return true
					}
				}
			}
			return false
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

func modelRuleMatches(m *selectors.Model, r selectors.Rule, remote netip.Addr, p selectors.Packet) bool {
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

// checkAgreement compares the model interpreter with selectors.Evaluate on every
// packet selectorstest.Packets lists.
func checkAgreement(t *testing.T, s *selectors.State) {
	t.Helper()
	models := map[string]*selectors.Model{}
	for _, node := range selectorstest.Nodes() {
		m, _ := selectors.BuildModel(node, s)
		models[node] = m
	}
	places := selectorstest.Places(s)
	for _, pk := range selectorstest.Packets(s) {
		want := selectors.Evaluate(s, pk)
		if got := decideByModel(models, places, pk); got != want.Allowed {
			t.Fatalf("model says %v, evaluator says %v for %s\n%s\npolicies: %s",
				got, want.Allowed, pk, want.Explain(), describePolicies(s))
		}
	}
}

func describePolicies(s *selectors.State) string {
	out := ""
	for _, p := range s.Policies {
		out += fmt.Sprintf("\n%s/%s: %+v", p.Namespace, p.Name, p.Spec)
	}
	return out
}

func TestModelAgreesWithEvaluator(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		s := selectorstest.RandomCluster(r)
		checkAgreement(t, s)
	}
}

func FuzzModelAgreesWithEvaluate(f *testing.F) {
	f.Fuzz(func(t *testing.T, seed int64) {
		checkAgreement(t, selectorstest.RandomCluster(rand.New(rand.NewSource(seed))))
	})
}
