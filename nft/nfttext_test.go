package nft

import (
	"errors"
	"fmt"
	"math/rand"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/nftpol/nftpol/selectors"
)

// everyKindModel is sampleModel plus what it lacks: intervals reaching the
// top of both address spaces (/0), single addresses in an interval set, an
// IPv6 range that is no prefix, named ports of several protocols, and
// rules of several single ports (a set of services) with and without
// port ranges beside them, in both kinds of policy.
func everyKindModel() *selectors.Model {
	m := sampleModel()
	m.AddrSets = append(m.AddrSets,
		selectors.AddrSet{ID: "everything", Description: "ipBlock 0.0.0.0/0 and ::/0", Ranges: []selectors.AddrRange{
			{First: netip.MustParseAddr("0.0.0.0"), Last: netip.MustParseAddr("255.255.255.255")},
			{First: netip.MustParseAddr("::"), Last: netip.MustParseAddr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")},
		}},
		selectors.AddrSet{ID: "mixed", Description: "ipBlock with except", Addrs: mustAddrs("10.5.0.1", "fd00:5::1"), Ranges: []selectors.AddrRange{
			{First: netip.MustParseAddr("10.6.0.0"), Last: netip.MustParseAddr("10.6.0.9")},
			{First: netip.MustParseAddr("fd00:6::3"), Last: netip.MustParseAddr("fd00:6::1:7")},
		}})
	m.PortSets[0].Entries = append(m.PortSets[0].Entries,
		selectors.PortEntry{Addr: netip.MustParseAddr("10.0.0.2"), Protocol: selectors.ProtocolUDP, Port: 53},
		selectors.PortEntry{Addr: netip.MustParseAddr("10.0.0.2"), Protocol: selectors.ProtocolSCTP, Port: 65535},
		selectors.PortEntry{Addr: netip.MustParseAddr("fd00::2"), Protocol: selectors.ProtocolUDP, Port: 1})
	// A rule of several ipBlocks: one union set of their ranges (unions.go);
	// "mixed" holds pod addresses too and keeps its own set.
	m.Policies = append(m.Policies, selectors.PolicyRules{Key: "x/p3", HasEgress: true, Egress: []selectors.Rule{{
		Peers: selectors.PeerMatch{Sets: []string{"cidr", "everything", "mixed"}},
		Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 443, Last: 443}}}}, {
		Peers: selectors.PeerMatch{Sets: []string{"pods-b"}},
		Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolUDP, First: 53, Last: 53},
			{Protocol: selectors.ProtocolTCP, First: 8000, Last: 8100}, {Protocol: selectors.ProtocolTCP, First: 53, Last: 53},
			{Protocol: selectors.ProtocolSCTP, First: 65535, Last: 65535}}}}}})
	m.Pods = append(m.Pods, selectors.PodRules{Key: "x/e", IPs: mustAddrs("10.0.0.5", "fd00::5"), Egress: []string{"x/p3"}})
	addClusterPolicies(m)
	return m
}

// addClusterPolicies adds every ClusterNetworkPolicy shape to m: both
// tiers, every action, a Pass into the NetworkPolicy tier (pod x/a), into
// Baseline and out of Baseline (pod x/c, which no NetworkPolicy isolates),
// and a pod only Baseline selects (x/d).
func addClusterPolicies(m *selectors.Model) {
	all := selectors.PeerMatch{All: true}
	m.ClusterPolicies = []selectors.ClusterPolicyRules{
		{Name: "admin-deny", Tier: selectors.TierAdmin, Priority: 1,
			Ingress: []selectors.ClusterRule{
				{Name: "no-cidr", Action: selectors.ActionDeny, Peers: selectors.PeerMatch{Sets: []string{"cidr"}}, Ports: selectors.PortMatch{All: true}},
				{Index: 1, Action: selectors.ActionPass, Peers: selectors.PeerMatch{Sets: []string{"pods-b"}}, Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: 80}}}},
				{Index: 2, Action: selectors.ActionAccept, Peers: all, Ports: selectors.PortMatch{Named: "named"}},
				{Index: 3, Action: selectors.ActionDeny, Peers: selectors.PeerMatch{Sets: []string{"pods-b"}}, Ports: selectors.PortMatch{Ranges: []selectors.PortRange{
					{Protocol: selectors.ProtocolTCP, First: 22, Last: 22}, {Protocol: selectors.ProtocolUDP, First: 22, Last: 22}, {Protocol: selectors.ProtocolTCP, First: 23, Last: 23}}}},
			},
			Egress: []selectors.ClusterRule{
				{Action: selectors.ActionDeny, Peers: selectors.PeerMatch{Sets: []string{"pods-b"}}, Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolUDP, First: 1000, Last: 2000}}}},
				{Index: 1, Action: selectors.ActionDeny, Peers: all, Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 0, Last: 65535}}}},
			}},
		{Name: "baseline-default-deny", Tier: selectors.TierBaseline, Priority: 1000,
			Ingress: []selectors.ClusterRule{
				{Name: "pass-b", Action: selectors.ActionPass, Peers: selectors.PeerMatch{Sets: []string{"pods-b"}}, Ports: selectors.PortMatch{All: true}},
				{Index: 1, Action: selectors.ActionDeny, Peers: all, Ports: selectors.PortMatch{All: true}},
			}},
	}
	m.Pods[0].Cluster[selectors.Ingress] = selectors.ClusterTiers{Admin: []string{"admin-deny"}, Baseline: []string{"baseline-default-deny"}}
	m.Pods[0].Cluster[selectors.Egress] = selectors.ClusterTiers{Admin: []string{"admin-deny"}}
	m.Pods = append(m.Pods,
		selectors.PodRules{Key: "x/c", IPs: mustAddrs("10.0.0.3", "fd00::3"), Cluster: [2]selectors.ClusterTiers{
			{Admin: []string{"admin-deny"}, Baseline: []string{"baseline-default-deny"}}}},
		selectors.PodRules{Key: "x/d", IPs: mustAddrs("10.0.0.4"), Cluster: [2]selectors.ClusterTiers{
			{Baseline: []string{"baseline-default-deny"}}}})
}

// TestNftTextLoadsAsTheSameTable loads NftText with `nft -f` into an empty
// namespace and reads the table back: it must be exactly the desired table,
// by the same comparison that checks our own netlink commits (Verify). So
// the text and our batch express the same table, and the benchmarks that
// compare them commit the same thing.
func TestNftTextLoadsAsTheSameTable(t *testing.T) {
	type tc struct {
		name  string
		cfg   Config
		model *selectors.Model
	}
	cases := []tc{
		{"every-kind/drop", Config{Deny: DenyDrop}, everyKindModel()},
		{"every-kind/reject", Config{Deny: DenyReject}, everyKindModel()},
		{"every-kind/drop-logged", Config{Deny: DenyDrop, LogDenied: true, LogGroup: 7, LogRate: 5}, everyKindModel()},
		{"every-kind/reject-logged", Config{Deny: DenyReject, LogDenied: true, LogGroup: 3}, everyKindModel()},
		{"empty", Config{Deny: DenyDrop}, &selectors.Model{}},
		{"every-kind/pod-guard", Config{Deny: DenyDrop}, withPodGuard(everyKindModel())},
		{"scale-1k-chains-10k-elems", Config{Deny: DenyDrop}, scaleModel(1_000, 10_000)},
		{"every-kind/lookup", Config{Deny: DenyDrop, LookupMinPolicies: 1}, everyKindModel()},
	}
	overlapping := rand.New(rand.NewSource(2))
	for i := 0; i < 4; i++ {
		m, _ := overlappingModel(overlapping)
		cases = append(cases, tc{fmt.Sprintf("lookup-overlapping/%d", i), Config{Deny: DenyReject, LookupMinPolicies: 1}, m})
	}
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 8; i++ {
		deny := DenyDrop
		if i%2 == 1 {
			deny = DenyReject
		}
		cases = append(cases, tc{fmt.Sprintf("random/%d", i), Config{Deny: deny}, randomModel(r)})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ns := testNetns(t)
			c.cfg.Table = "nftpol"
			desired := Compile(c.model, c.cfg)
			file := filepath.Join(t.TempDir(), "table.nft")
			if err := os.WriteFile(file, []byte(desired.NftText()), 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("ip", "netns", "exec", filepath.Base(ns), "nft", "-f", file).CombinedOutput(); err != nil {
				t.Fatalf("nft -f: %v: %s", err, out)
			}
			e := newTestEnforcer(t, ns, c.cfg.Deny)
			// As if the enforcer had committed desired itself: Verify then
			// compares the kernel's table with it, chains, rules and elements.
			e.committed = desired
			if err := e.Verify(); err != nil {
				t.Fatalf("the table nft loaded is not the desired one: %v", err)
			}
		})
	}
}

// TestNftTextReplaces loads two texts in a row: the second replaces the
// first whole, like a full netlink commit does.
func TestNftTextReplaces(t *testing.T) {
	ns := testNetns(t)
	cfg := Config{Table: "nftpol", Deny: DenyDrop}
	e := newTestEnforcer(t, ns, cfg.Deny)
	for i, m := range []*selectors.Model{everyKindModel(), sampleModel()} {
		desired := Compile(m, cfg)
		file := filepath.Join(t.TempDir(), "table.nft")
		if err := os.WriteFile(file, []byte(desired.NftText()), 0o600); err != nil {
			t.Fatal(err)
		}
		nftIn(t, ns, "-f", file)
		e.committed = desired
		if err := e.Verify(); err != nil {
			t.Fatalf("load %d: %v", i, err)
		}
	}
	// And the comparison is no formality: the first table is gone.
	e.committed = Compile(everyKindModel(), cfg)
	if err := e.Verify(); !errors.Is(err, ErrDrift) {
		t.Fatalf("verify against the replaced table: %v, want ErrDrift", err)
	}
}

// withPodGuard adds a guard of pod addresses (two CIDRs per family, one
// inside the other, and the model's pods as known) to m.
func withPodGuard(m *selectors.Model) *selectors.Model {
	m.Guard.PodCIDRs = []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.0.1.0/24"),
		netip.MustParsePrefix("fd00::/64"), netip.MustParsePrefix("fd00:1::/64")}
	for _, p := range m.Pods {
		m.Guard.Known = append(m.Guard.Known, p.IPs...)
	}
	return m
}
