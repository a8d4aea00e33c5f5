package nft

import (
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"sort"
	"testing"

	"github.com/nftpol/nftpol/selectors"
)

// randomModel draws a model over a small universe of pods, policies and
// sets, so that consecutive draws share most objects and differ in a few:
// pods gain and lose policies, sets gain and lose members, rules change,
// sets appear and disappear.
func randomModel(r *rand.Rand) *selectors.Model {
	m := &selectors.Model{}
	setIDs := []string{}
	for i := 0; i < 6; i++ {
		if r.Intn(4) == 0 {
			continue
		}
		id := fmt.Sprintf("set-%d", i)
		s := selectors.AddrSet{ID: id, Description: id}
		if i == 5 {
			s.Ranges = []selectors.AddrRange{{First: netip.MustParseAddr("10.9.0.0"), Last: netip.MustParseAddr("10.9.255.255")}}
			if r.Intn(2) == 0 {
				s.Ranges = append(s.Ranges, selectors.AddrRange{First: netip.MustParseAddr("fd00:9::"), Last: netip.MustParseAddr("fd00:9::ffff")})
			}
		} else {
			for j := 0; j < 40; j++ {
				if r.Intn(3) == 0 {
					s.Addrs = append(s.Addrs, netip.AddrFrom4([4]byte{10, 1, byte(i), byte(j)}))
				}
				if r.Intn(5) == 0 {
					s.Addrs = append(s.Addrs, netip.MustParseAddr(fmt.Sprintf("fd00:1:%d::%d", i, j+1)))
				}
			}
			sort.Slice(s.Addrs, func(a, b int) bool { return s.Addrs[a].Less(s.Addrs[b]) })
		}
		m.AddrSets = append(m.AddrSets, s)
		setIDs = append(setIDs, id)
	}
	named := r.Intn(2) == 0
	if named {
		ps := selectors.PortSet{ID: "named"}
		for j := 0; j < 10; j++ {
			if r.Intn(2) == 0 {
				ps.Entries = append(ps.Entries, selectors.PortEntry{Addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(j)}), Protocol: selectors.ProtocolTCP, Port: uint16(8000 + r.Intn(3))})
			}
		}
		m.PortSets = append(m.PortSets, ps)
	}
	var keys []string
	for p := 0; p < 5; p++ {
		key := fmt.Sprintf("ns/p%d", p)
		keys = append(keys, key)
		pr := selectors.PolicyRules{Key: key, HasIngress: true, HasEgress: true}
		for dir := 0; dir < 2; dir++ {
			var rules []selectors.Rule
			for k := 0; k < r.Intn(3); k++ {
				rule := selectors.Rule{}
				if len(setIDs) == 0 || r.Intn(4) == 0 {
					rule.Peers.All = true
				} else {
					rule.Peers.Sets = []string{setIDs[r.Intn(len(setIDs))]}
				}
				switch r.Intn(3) {
				case 0:
					rule.Ports.All = true
				case 1:
					rule.Ports.Ranges = []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: uint16(80 + r.Intn(2))}}
				default:
					if named {
						rule.Ports.Named = "named"
					} else {
						rule.Ports.Ranges = []selectors.PortRange{{Protocol: selectors.ProtocolUDP, First: 53, Last: 53}}
					}
				}
				rules = append(rules, rule)
			}
			if dir == 0 {
				pr.Ingress = rules
			} else {
				pr.Egress = rules
			}
		}
		m.Policies = append(m.Policies, pr)
	}
	randomClusterPolicies(r, m, setIDs, named)
	for i := 0; i < 12; i++ {
		pod := selectors.PodRules{Key: fmt.Sprintf("ns/pod%02d", i), IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})}}
		if r.Intn(2) == 0 {
			pod.IPs = append(pod.IPs, netip.MustParseAddr(fmt.Sprintf("fd00::%d", i+1)))
		}
		pick := func() []string {
			var out []string
			for _, k := range keys {
				if r.Intn(3) == 0 {
					out = append(out, k)
				}
			}
			return out
		}
		pod.Ingress, pod.Egress = pick(), pick()
		for dir := range pod.Cluster {
			for _, c := range m.ClusterPolicies {
				if r.Intn(3) != 0 {
					continue
				}
				t := &pod.Cluster[dir]
				if c.Tier == selectors.TierAdmin {
					t.Admin = append(t.Admin, c.Name)
				} else {
					t.Baseline = append(t.Baseline, c.Name)
				}
			}
		}
		if len(pod.Ingress)+len(pod.Egress) > 0 || !pod.Cluster[0].Empty() || !pod.Cluster[1].Empty() {
			m.Pods = append(m.Pods, pod)
		}
	}
	return m
}

// randomClusterPolicies adds up to four ClusterNetworkPolicies of random
// tiers with random rules over the model's sets, in evaluation order.
func randomClusterPolicies(r *rand.Rand, m *selectors.Model, setIDs []string, named bool) {
	for p := 0; p < 4; p++ {
		if r.Intn(3) == 0 {
			continue
		}
		cp := selectors.ClusterPolicyRules{Name: fmt.Sprintf("cnp%d", p), Tier: selectors.Tier(1 + r.Intn(2)), Priority: int32(p)}
		for dir := 0; dir < 2; dir++ {
			var rules []selectors.ClusterRule
			for k := 0; k < 1+r.Intn(3); k++ {
				rule := selectors.ClusterRule{Index: k, Action: selectors.Action(1 + r.Intn(3))}
				if r.Intn(2) == 0 {
					rule.Name = fmt.Sprintf("r%d", k)
				}
				if len(setIDs) == 0 || r.Intn(4) == 0 {
					rule.Peers.All = true
				} else {
					rule.Peers.Sets = []string{setIDs[r.Intn(len(setIDs))]}
				}
				switch r.Intn(4) {
				case 0:
					rule.Ports.All = true
				case 1:
					rule.Ports.Ranges = []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: uint16(80 + r.Intn(2))}}
				case 2:
					rule.Ports.Ranges = []selectors.PortRange{{Protocol: selectors.ProtocolUDP, First: 53, Last: 53}}
				default:
					if named {
						rule.Ports.Named = "named"
					} else {
						rule.Ports.Ranges = []selectors.PortRange{{Protocol: selectors.ProtocolSCTP, First: 1, Last: 65535}}
					}
				}
				rules = append(rules, rule)
			}
			if dir == 0 {
				cp.Ingress = rules
			} else {
				cp.Egress = rules
			}
		}
		m.ClusterPolicies = append(m.ClusterPolicies, cp)
	}
}

// versionSets gives the peer sets of m made only of addresses a Version
// and, as selectors.Builder does, a Delta from the set of the same ID in
// prev (the model compiled before): the same Version when the content is
// the same. One time in four a changed set comes without a Delta, or with
// a Delta from a version the compiler never saw, which must compile in
// full. The delta is computed here from the contents, not by the
// Builder's code.
func versionSets(r *rand.Rand, prev, m *selectors.Model) {
	before := map[string]*selectors.AddrSet{}
	if prev != nil {
		for i := range prev.AddrSets {
			before[prev.AddrSets[i].ID] = &prev.AddrSets[i]
		}
	}
	for i := range m.AddrSets {
		s := &m.AddrSets[i]
		if len(s.Ranges) > 0 {
			continue
		}
		old := before[s.ID]
		if old == nil || old.Version == nil || old.Description != s.Description {
			s.Version = &selectors.SetVersion{}
			continue
		}
		if slices.Equal(old.Addrs, s.Addrs) {
			*s = *old
			continue
		}
		s.Version = &selectors.SetVersion{}
		had := map[netip.Addr]bool{}
		for _, a := range old.Addrs {
			had[a] = true
		}
		d := &selectors.AddrSetDelta{From: old.Version}
		for _, a := range s.Addrs {
			if !had[a] {
				d.Added = append(d.Added, a)
			}
			delete(had, a)
		}
		for _, a := range old.Addrs {
			if had[a] {
				d.Removed = append(d.Removed, a)
			}
		}
		switch r.Intn(8) {
		case 0:
			d = nil
		case 1:
			d.From = &selectors.SetVersion{}
		}
		s.Delta = d
	}
}

// TestIncrementalSyncsEqualFullCompiles commits a random walk of models
// incrementally; after every commit the kernel's table, read back, must be
// exactly the desired one (Verify), which is what a full replace would
// have produced.
func TestIncrementalSyncsEqualFullCompiles(t *testing.T) {
	ns := testNetns(t)
	for _, deny := range []DenyAction{DenyDrop, DenyReject} {
		e := newTestEnforcer(t, ns, deny)
		e.Invalidate()
		r := rand.New(rand.NewSource(int64(len(deny))))
		var prev *selectors.Model
		for step := 0; step < 60; step++ {
			m := randomModel(r)
			versionSets(r, prev, m)
			prev = m
			stats, err := e.Sync(m)
			if err != nil {
				t.Fatalf("%s step %d: incremental sync: %v", deny, step, err)
			}
			if step > 0 && stats.Full {
				t.Fatalf("%s step %d: fell back to a full replace", deny, step)
			}
			if err := e.Verify(); err != nil {
				t.Fatalf("%s step %d: after an incremental sync (%+v): %v", deny, step, stats.PlanStats, err)
			}
		}
	}
}

// TestCompilerReuseEqualsFreshCompile: a Compiler that shares unchanged
// sets and chains with its previous table and applies the deltas of
// changed sets compiles, over a random history, exactly the table a fresh
// compile gives; and the plan from the previous table (which takes the
// deltas as they are) is the plan a comparison of every element gives. Root-free twin of
// TestIncrementalSyncsEqualFullCompiles.
func TestCompilerReuseEqualsFreshCompile(t *testing.T) {
	t.Run("walk", func(t *testing.T) { checkCompilerReuse(t, Config{Deny: DenyReject}) })
	// Lookup maps follow the peer sets: never reused stale.
	t.Run("lookup", func(t *testing.T) { checkCompilerReuse(t, Config{Deny: DenyReject, LookupMinPolicies: 1}) })
}

func checkCompilerReuse(t *testing.T, cfg Config) {
	c, err := NewCompiler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewSource(3))
	var prev, prevFresh *Ruleset
	var prevModel *selectors.Model
	for step := 0; step < 300; step++ {
		m := randomModel(r)
		versionSets(r, prevModel, m)
		prevModel0 := prevModel
		prevModel = m
		got, want := c.Compile(m), Compile(m, cfg)
		if g, w := got.NftText(), want.NftText(); g != w {
			t.Fatalf("step %d: the reusing compile differs from a fresh one:\n%s", step, lineDiff(w, g))
		}
		if p := Diff(want, got); !p.Empty() {
			t.Fatalf("step %d: a plan between equal tables: %s", step, p)
		}
		if prev != nil {
			checkDeltasApplied(t, step, prevModel0, m, prev, got)
			// The plan Diff takes from the Compiler's deltas and shared
			// objects is the one a comparison of every element gives.
			plan, compared := Diff(prev, got), Diff(prevFresh, got)
			if plan.Full {
				t.Fatalf("step %d: a random change needs a full replace", step)
			}
			if g, w := plan.String(), compared.String(); g != w {
				t.Fatalf("step %d: the plan from the reused table differs from the compared one:\n%s", step, lineDiff(w, g))
			}
		}
		prev, prevFresh = got, want
	}
}

// TestCompilerReusedChainKeepsItsUnions: a policy chain shared with the
// previous table still finds the union set of its ipBlocks in the new
// one, and the sets merged into it are still left out (random models
// have one ipBlock set per rule, so no union).
func TestCompilerReusedChainKeepsItsUnions(t *testing.T) {
	block := func(id, first, last string) selectors.AddrSet {
		return selectors.AddrSet{ID: id, Description: id, Ranges: []selectors.AddrRange{{First: netip.MustParseAddr(first), Last: netip.MustParseAddr(last)}}}
	}
	model := func(podIP string) *selectors.Model {
		return &selectors.Model{
			Pods: []selectors.PodRules{{Key: "ns/a", IPs: []netip.Addr{netip.MustParseAddr(podIP)}, Ingress: []string{"ns/p"}}},
			Policies: []selectors.PolicyRules{{Key: "ns/p", HasIngress: true, Ingress: []selectors.Rule{
				{Peers: selectors.PeerMatch{Sets: []string{"b1", "b2"}}, Ports: selectors.PortMatch{All: true}}}}},
			AddrSets: []selectors.AddrSet{block("b1", "10.1.0.0", "10.1.0.255"), block("b2", "10.2.0.0", "10.2.0.255")},
		}
	}
	c, err := NewCompiler(Config{})
	if err != nil {
		t.Fatal(err)
	}
	for step, ip := range []string{"10.0.0.1", "10.0.0.2"} {
		m := model(ip)
		if got, want := c.Compile(m).NftText(), Compile(m, Config{}).NftText(); got != want {
			t.Fatalf("step %d: the reusing compile differs from a fresh one:\n%s", step, lineDiff(want, got))
		}
	}
}

// checkDeltasApplied: a hash set whose Delta starts from the version the
// last table was compiled from is made from that table's spec (shared, or
// derived with the delta's keys), never compiled and compared in full.
func checkDeltasApplied(t *testing.T, step int, last, m *selectors.Model, lastTable, table *Ruleset) {
	t.Helper()
	from := map[string]*selectors.SetVersion{}
	for _, s := range last.AddrSets {
		from[s.ID] = s.Version
	}
	for _, s := range m.AddrSets {
		if s.Delta == nil || len(s.Ranges) > 0 || from[s.ID] == nil || from[s.ID] != s.Delta.From {
			continue
		}
		for _, fam := range []int{4, 6} {
			name := addrSetName(s.ID, fam)
			spec, old := table.sets[name], lastTable.sets[name]
			if spec != old && (old == nil || spec.base == nil || spec.base != old.serial) {
				t.Fatalf("step %d: set %s has a delta from the last table's version but was compiled in full", step, name)
			}
		}
	}
}
