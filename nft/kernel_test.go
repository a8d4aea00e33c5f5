package nft

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/test/kerneltest"
)

// netnsPrefix names the network namespaces of this package's tests;
// NFTPOL_TEST_NETNS_PREFIX replaces it, so that runs of two people on one
// machine do not remove each other's namespaces as leftovers.
var netnsPrefix = cmp.Or(os.Getenv("NFTPOL_TEST_NETNS_PREFIX"), "nftpol-nft")

// testNetns creates a network namespace for one test (removed at its end)
// and returns its path; it skips or fails (CI) where that is impossible.
func testNetns(t testing.TB) string {
	t.Helper()
	kerneltest.Require(t, kerneltest.NftBinary)
	return kerneltest.Netns(t, netnsPrefix)
}

// testNode pairs a Compiler and an Enforcer, as the agent's syncer does.
type testNode struct {
	*Enforcer
	compiler *Compiler
}

// Sync compiles m and commits it.
func (n *testNode) Sync(m *selectors.Model) (CommitStats, error) {
	return n.Commit(n.compiler.Compile(m))
}

func newTestEnforcer(t testing.TB, netns string, deny DenyAction) *testNode {
	t.Helper()
	return newTestNode(t, Config{Table: "nftpol", NetNSPath: netns, Deny: deny})
}

func newTestNode(t testing.TB, cfg Config) *testNode {
	t.Helper()
	e, err := NewEnforcer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	c, err := NewCompiler(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &testNode{Enforcer: e, compiler: c}
}

// nftIn runs the nft command in the namespace at path netns.
func nftIn(t testing.TB, netns string, args ...string) string {
	t.Helper()
	return kerneltest.Nft(t, netns, args...)
}

func mustAddrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// sampleModel isolates two local pods with every kind of rule.
func sampleModel() *selectors.Model {
	return &selectors.Model{
		Pods: []selectors.PodRules{
			{Key: "x/a", IPs: mustAddrs("10.0.0.1", "fd00::1"), Ingress: []string{"x/p1", "x/p2"}, Egress: []string{"x/p2"}},
			{Key: "x/b", IPs: mustAddrs("10.0.0.2"), Ingress: []string{"x/p1", "x/p2"}},
		},
		Policies: []selectors.PolicyRules{
			{Key: "x/p1", HasIngress: true, Ingress: []selectors.Rule{
				{Peers: selectors.PeerMatch{Sets: []string{"pods-b"}}, Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: 80}, {Protocol: selectors.ProtocolSCTP, First: 1000, Last: 2000}}}},
				{Peers: selectors.PeerMatch{Sets: []string{"cidr"}}, Ports: selectors.PortMatch{All: true}},
			}},
			{Key: "x/p2", HasIngress: true, HasEgress: true,
				Ingress: []selectors.Rule{{Peers: selectors.PeerMatch{All: true}, Ports: selectors.PortMatch{Named: "named"}}},
				Egress:  []selectors.Rule{{Peers: selectors.PeerMatch{All: true}, Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolUDP, First: 0, Last: 65535}}}}},
			},
		},
		AddrSets: []selectors.AddrSet{
			{ID: "cidr", Description: "ipBlock", Ranges: []selectors.AddrRange{
				{First: netip.MustParseAddr("0.0.0.0"), Last: netip.MustParseAddr("9.255.255.255")},
				{First: netip.MustParseAddr("11.0.0.0"), Last: netip.MustParseAddr("255.255.255.255")},
				{First: netip.MustParseAddr("fd00::"), Last: netip.MustParseAddr("fd00::ff")},
			}},
			{ID: "pods-b", Description: "pods b", Addrs: mustAddrs("10.0.1.1", "10.0.1.2", "fd00::1:1")},
		},
		PortSets: []selectors.PortSet{{ID: "named", Entries: []selectors.PortEntry{
			{Addr: netip.MustParseAddr("10.0.0.1"), Protocol: selectors.ProtocolTCP, Port: 8080},
			{Addr: netip.MustParseAddr("fd00::1"), Protocol: selectors.ProtocolTCP, Port: 8080},
		}}},
	}
}

func TestSyncReadBackAndNftParses(t *testing.T) {
	for _, tc := range []struct {
		name string
		deny DenyAction
		log  bool
	}{{"drop", DenyDrop, false}, {"reject", DenyReject, false}, {"drop-logged", DenyDrop, true}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testNetns(t)
			e := newTestNode(t, Config{Table: "nftpol", NetNSPath: ns, Deny: tc.deny, LogDenied: tc.log, LogGroup: 7, LogRate: 5})
			stats, err := e.Sync(sampleModel())
			if err != nil {
				t.Fatalf("sync: %v", err)
			}
			if !stats.Full {
				t.Errorf("first sync should replace the table")
			}
			if err := e.Verify(); err != nil {
				t.Fatalf("verify after sync: %v", err)
			}
			listing := nftIn(t, ns, "list", "table", "inet", "nftpol")
			for _, want := range []string{"hook forward priority filter", "ct state established,related accept",
				"ip saddr vmap @egress_v4", "sctp", "sctp dport 1000-2000", "ip daddr . meta l4proto . th dport @p-", "comment \"x/p1 ingress[0]\""} {
				if !strings.Contains(listing, want) {
					t.Errorf("listing lacks %q:\n%s", want, listing)
				}
			}
			if tc.log && !strings.Contains(listing, `limit rate 5/second log prefix "nftpol-deny-ingress" group 7`) {
				t.Errorf("listing lacks the rate-limited log rule:\n%s", listing)
			}
			// What nft prints must parse back (operators copy it around).
			check := testNetns(t)
			cmd := exec.Command("ip", "netns", "exec", filepath.Base(check), "nft", "-c", "-f", "-")
			cmd.Stdin = strings.NewReader(listing)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("nft -c of the listing failed: %v: %s\n%s", err, out, listing)
			}
			// A second sync of the same model changes nothing.
			stats, err = e.Sync(sampleModel())
			if err != nil {
				t.Fatal(err)
			}
			if stats.Full || stats.ElementsAdded+stats.ElementsDeleted+stats.ChainsRewritten+stats.ChainsAdded != 0 {
				t.Errorf("unchanged model produced work: %+v", stats)
			}
		})
	}
}

func setElementCount(t *testing.T, ns, set string) int {
	t.Helper()
	f, err := os.Open(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	table := &nftables.Table{Name: "nftpol", Family: nftables.TableFamilyINet}
	s, err := c.GetSetByName(table, set)
	if err != nil {
		t.Fatalf("set %s: %v", set, err)
	}
	elems, err := c.GetSetElements(s)
	if err != nil {
		t.Fatal(err)
	}
	return len(elems)
}

func TestIncrementalSyncAndDrift(t *testing.T) {
	ns := testNetns(t)
	e := newTestEnforcer(t, ns, DenyDrop)
	m := sampleModel()
	if _, err := e.Sync(m); err != nil {
		t.Fatal(err)
	}
	// A pod joins a peer set: one element add.
	m.AddrSets[1].Addrs = append(m.AddrSets[1].Addrs, netip.MustParseAddr("10.0.1.3"))
	stats, err := e.Sync(m)
	if err != nil {
		t.Fatal(err)
	}
	want := PlanStats{ElementsAdded: 1}
	if stats.PlanStats != want {
		t.Errorf("pod join: got %+v, want %+v", stats.PlanStats, want)
	}
	if n := setElementCount(t, ns, addrSetName("pods-b", 4)); n != 3 {
		t.Errorf("set holds %d IPv4 elements, want 3", n)
	}
	if err := e.Verify(); err != nil {
		t.Fatal(err)
	}

	// Drift: a third party adds an element to our set.
	nftIn(t, ns, "add", "element", "inet", "nftpol", addrSetName("pods-b", 4), "{ 192.0.2.1 }")
	if err := e.Verify(); !errors.Is(err, ErrDrift) {
		t.Fatalf("verify after a foreign element: %v, want ErrDrift", err)
	}
	// Drift: a chain is flushed.
	e.Invalidate()
	if _, err := e.Sync(m); err != nil {
		t.Fatal(err)
	}
	nftIn(t, ns, "flush", "chain", "inet", "nftpol", ChainForwardIngress)
	if err := e.Verify(); !errors.Is(err, ErrDrift) {
		t.Fatalf("verify after a flushed chain: %v, want ErrDrift", err)
	}
	e.Invalidate()
	if _, err := e.Sync(m); err != nil {
		t.Fatal(err)
	}
	// Drift: the table is deleted.
	nftIn(t, ns, "delete", "table", "inet", "nftpol")
	if err := e.Verify(); !errors.Is(err, ErrDrift) {
		t.Fatalf("verify after a deleted table: %v, want ErrDrift", err)
	}
	e.Invalidate()
	if _, err := e.Sync(m); err != nil {
		t.Fatal(err)
	}
	if err := e.Verify(); err != nil {
		t.Fatalf("verify after repair: %v", err)
	}
}

// TestVerifyDuringACommitConcludesNothing: a verification reads the table
// without holding up commits, so a commit may land while it reads. What
// it read then is not the committed table it compares with, and it must
// not call that drift (which would replace the table for nothing); a
// foreign change while no commit lands still is drift.
func TestVerifyDuringACommitConcludesNothing(t *testing.T) {
	ns := testNetns(t)
	e := newTestEnforcer(t, ns, DenyDrop)
	m := sampleModel()
	if _, err := e.Sync(m); err != nil {
		t.Fatal(err)
	}
	// A pod joins a peer set while the table is being read.
	commitWhileReading := func() (*Ruleset, error) {
		next := sampleModel()
		next.AddrSets[1].Addrs = append(next.AddrSets[1].Addrs, netip.MustParseAddr("10.0.1.3"))
		if _, err := e.Sync(next); err != nil {
			return nil, err
		}
		return e.ReadTable()
	}
	if err := e.verify(commitWhileReading); err != nil {
		t.Fatalf("verify with a commit during its read: %v, want no conclusion (nil)", err)
	}
	if err := e.Verify(); err != nil {
		t.Fatalf("verify after that commit: %v", err)
	}
	// A third party adds an element while the table is being read, and no
	// commit lands: drift.
	foreignWhileReading := func() (*Ruleset, error) {
		nftIn(t, ns, "add", "element", "inet", "nftpol", addrSetName("pods-b", 4), "{ 192.0.2.1 }")
		return e.ReadTable()
	}
	if err := e.verify(foreignWhileReading); !errors.Is(err, ErrDrift) {
		t.Fatalf("verify with a foreign element added during its read: %v, want ErrDrift", err)
	}
}

func TestForeignTableIsNeverTouched(t *testing.T) {
	ns := testNetns(t)
	nftIn(t, ns, "add", "table", "inet", "foreign")
	nftIn(t, ns, "add", "chain", "inet", "foreign", "fw", "{ type filter hook forward priority 0; }")
	nftIn(t, ns, "add", "rule", "inet", "foreign", "fw", "tcp dport 22 counter accept")
	before := nftIn(t, ns, "list", "table", "inet", "foreign")

	e := newTestEnforcer(t, ns, DenyDrop)
	if _, err := e.Sync(sampleModel()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Sync(&selectors.Model{}); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteTable(); err != nil {
		t.Fatal(err)
	}
	if err := e.DeleteTable(); err != nil {
		t.Fatalf("deleting an absent table should succeed: %v", err)
	}
	if after := nftIn(t, ns, "list", "table", "inet", "foreign"); after != before {
		t.Fatalf("foreign table changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if all := nftIn(t, ns, "list", "tables"); strings.Contains(all, "nftpol") {
		t.Fatalf("our table is still there: %s", all)
	}
}

// scaleModel has nPods isolated pods sharing nPolicies policies, each pod
// its own isolation list (one chain each) and big peer sets.
func scaleModel(nChains, nElems int) *selectors.Model {
	m := &selectors.Model{}
	perSet := nElems / 10
	for s := 0; s < 10; s++ {
		set := selectors.AddrSet{ID: fmt.Sprintf("big-%d", s)}
		for i := 0; i < perSet; i++ {
			n := s*perSet + i
			set.Addrs = append(set.Addrs, netip.AddrFrom4([4]byte{10, byte(n >> 16), byte(n >> 8), byte(n)}))
		}
		m.AddrSets = append(m.AddrSets, set)
	}
	for p := 0; p < nChains/2; p++ {
		key := fmt.Sprintf("ns/p%05d", p)
		m.Policies = append(m.Policies, selectors.PolicyRules{Key: key, HasIngress: true, Ingress: []selectors.Rule{
			{Peers: selectors.PeerMatch{Sets: []string{fmt.Sprintf("big-%d", p%10)}}, Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: 80}}}},
		}})
		m.Pods = append(m.Pods, selectors.PodRules{Key: fmt.Sprintf("ns/pod%05d", p),
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{100, 64, byte(p >> 8), byte(p)})}, Ingress: []string{key}})
	}
	return m
}

func TestLargeCommit(t *testing.T) {
	ns := testNetns(t)
	e := newTestEnforcer(t, ns, DenyDrop)
	m := scaleModel(10_000, 100_000)
	stats, err := e.Sync(m)
	if err != nil {
		t.Fatalf("committing 10k chains / 100k elements: %v", err)
	}
	t.Logf("full commit: %+v", stats)
	if n := setElementCount(t, ns, addrSetName("big-3", 4)); n != 10_000 {
		t.Fatalf("a 10k-element set reads back %d elements", n)
	}
	if err := e.Verify(); err != nil {
		t.Fatalf("verify: %v", err)
	}
}

// TestCountersSumRulesOfOneDump gives rules in a policy chain and an
// isolation chain known counts (nft can create a counter with a start
// value) and checks that Counters, which reads the whole table in one
// netlink dump, attributes them to the right policies and verdicts.
func TestCountersSumRulesOfOneDump(t *testing.T) {
	ns := testNetns(t)
	e := newTestEnforcer(t, ns, DenyDrop)
	if _, err := e.Sync(sampleModel()); err != nil {
		t.Fatal(err)
	}
	var policyChain, isolationChain string
	for _, name := range e.committed.sortedChainNames() {
		spec := e.committed.chains[name]
		if spec.dir != selectors.Ingress {
			continue
		}
		switch {
		case !spec.isolates && len(spec.policies) == 1 && spec.policies[0] == "x/p1":
			policyChain = name
		case spec.isolates && len(spec.policies) == 2 && isolationChain == "":
			isolationChain = name
		}
	}
	if policyChain == "" || isolationChain == "" {
		t.Fatalf("no ingress chain of x/p1 (%q) or isolation chain of two policies (%q)", policyChain, isolationChain)
	}
	nftIn(t, ns, "add", "rule", "inet", "nftpol", policyChain, "meta", "l4proto", "tcp", "counter", "packets", "7", "bytes", "700")
	nftIn(t, ns, "add", "rule", "inet", "nftpol", policyChain, "meta", "l4proto", "udp", "counter", "packets", "1", "bytes", "100")
	nftIn(t, ns, "add", "rule", "inet", "nftpol", isolationChain, "counter", "packets", "3", "bytes", "300")
	counters, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]PolicyCounter{}
	for _, pc := range counters {
		got[pc.Policy+" "+pc.Direction.String()] = pc
	}
	want := map[string]PolicyCounter{
		"x/p1 ingress": {Policy: "x/p1", Direction: selectors.Ingress, AllowedPackets: 8, AllowedBytes: 800, DeniedPackets: 3, DeniedBytes: 300},
		"x/p2 ingress": {Policy: "x/p2", Direction: selectors.Ingress, DeniedPackets: 3, DeniedBytes: 300},
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %+v, want %+v", k, got[k], w)
		}
	}
	if g := got["x/p2 egress"]; g.AllowedPackets+g.DeniedPackets != 0 {
		t.Errorf("x/p2 egress counted packets nobody sent: %+v", g)
	}
}

// TestCountersNeverDecrease: a commit that rewrites a policy chain, or
// replaces the table, restarts the kernel's rule counters; the policy
// counters the agent exports must not go backwards (Prometheus rate()).
func TestCountersNeverDecrease(t *testing.T) {
	ns := testNetns(t)
	e := newTestEnforcer(t, ns, DenyDrop)
	m := sampleModel()
	if _, err := e.Sync(m); err != nil {
		t.Fatal(err)
	}
	p1 := policyChainName("x/p1", selectors.Ingress)
	iso := isolationChainName([]string{"x/p1", "x/p2"}, selectors.Ingress)
	// Counts as if packets had passed: rules with preset counters.
	nftIn(t, ns, "add", "rule", "inet", "nftpol", p1, "meta", "l4proto", "tcp", "counter", "packets", "7", "bytes", "700")
	nftIn(t, ns, "add", "rule", "inet", "nftpol", iso, "counter", "packets", "3", "bytes", "300")
	read := func() map[string]PolicyCounter {
		t.Helper()
		counters, err := e.Counters()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]PolicyCounter{}
		for _, pc := range counters {
			out[pc.Policy+" "+pc.Direction.String()] = pc
		}
		return out
	}
	atLeast := func(step string, before, after map[string]PolicyCounter) {
		t.Helper()
		for k, b := range before {
			a := after[k]
			if a.AllowedPackets < b.AllowedPackets || a.AllowedBytes < b.AllowedBytes || a.DeniedPackets < b.DeniedPackets || a.DeniedBytes < b.DeniedBytes {
				t.Fatalf("%s: %s went back from %+v to %+v", step, k, b, a)
			}
		}
	}
	first := read()
	if first["x/p1 ingress"].AllowedPackets != 7 || first["x/p2 ingress"].DeniedPackets != 3 {
		t.Fatalf("counters before the rewrite: %+v", first)
	}
	// x/p1 gains a port: its chain is flushed and rewritten.
	m.Policies[0].Ingress[0].Ports.Ranges = append(m.Policies[0].Ingress[0].Ports.Ranges, selectors.PortRange{Protocol: selectors.ProtocolUDP, First: 53, Last: 53})
	if stats, err := e.Sync(m); err != nil || stats.ChainsRewritten == 0 {
		t.Fatalf("rewrite: %+v, %v", stats, err)
	}
	second := read()
	atLeast("after a chain rewrite", first, second)
	// Drift: the whole table is replaced.
	e.Invalidate()
	if _, err := e.Sync(m); err != nil {
		t.Fatal(err)
	}
	atLeast("after a full replace", second, read())
}

// TestSetWhoseShapeChangesIsReplacedWithTheTable: when a set keeps its
// name but its comment (or kind) changes while unchanged chains still use
// it, deleting and re-adding it in one transaction fails ("device or
// resource busy") and would leave the agent retrying full replaces; the
// plan replaces the table whole instead, and the commit succeeds.
func TestSetWhoseShapeChangesIsReplacedWithTheTable(t *testing.T) {
	ns := testNetns(t)
	e := newTestEnforcer(t, ns, DenyDrop)
	m := sampleModel()
	if _, err := e.Sync(m); err != nil {
		t.Fatal(err)
	}
	for i, change := range []func(m *selectors.Model){
		func(m *selectors.Model) { m.PortSets[0].Description = "named ports, described anew" },
		func(m *selectors.Model) { m.AddrSets[1].Description = "pods b, described anew" },
		func(m *selectors.Model) {
			// An address set turns into an interval set.
			m.AddrSets[1].Ranges = []selectors.AddrRange{{First: netip.MustParseAddr("10.7.0.0"), Last: netip.MustParseAddr("10.7.0.255")}}
		},
	} {
		change(m)
		stats, err := e.Sync(m)
		if err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
		if !stats.Full {
			t.Fatalf("change %d: %+v, want a full replace", i, stats.PlanStats)
		}
		if err := e.Verify(); err != nil {
			t.Fatalf("change %d: %v", i, err)
		}
	}
}

// TestClusterPolicyCountersPerRule: ClusterNetworkPolicy rules are
// counted one by one, by their comment, allowed or denied by their
// verdict; the NetworkPolicy counters of the same table are unaffected.
func TestClusterPolicyCountersPerRule(t *testing.T) {
	ns := testNetns(t)
	e := newTestEnforcer(t, ns, DenyDrop)
	if _, err := e.Sync(everyKindModel()); err != nil {
		t.Fatal(err)
	}
	var baseline string
	for _, name := range e.committed.sortedChainNames() {
		if strings.HasPrefix(name, baselineChainPrefix) {
			baseline = name
		}
	}
	if baseline == "" {
		t.Fatal("no baseline chain")
	}
	// Rules with known counts and the comments of the baseline's rules,
	// as if packets had matched them.
	nftIn(t, ns, "add", "rule", "inet", "nftpol", baseline, "meta", "l4proto", "tcp", "counter", "packets", "4", "bytes", "400", "comment", `"cnp:baseline-default-deny ingress[1]"`)
	nftIn(t, ns, "add", "rule", "inet", "nftpol", baseline, "meta", "l4proto", "udp", "counter", "packets", "2", "bytes", "200", "comment", `"cnp:baseline-default-deny ingress[0]:pass-b"`)
	counters, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]PolicyCounter{}
	for _, pc := range counters {
		got[pc.Policy+" "+pc.Direction.String()] = pc
	}
	want := map[string]PolicyCounter{
		"baseline-default-deny ingress[1] ingress":        {Policy: "baseline-default-deny ingress[1]", Direction: selectors.Ingress, DeniedPackets: 4, DeniedBytes: 400},
		"baseline-default-deny ingress[0]:pass-b ingress": {Policy: "baseline-default-deny ingress[0]:pass-b", Direction: selectors.Ingress, AllowedPackets: 2, AllowedBytes: 200},
		"admin-deny egress[1] egress":                     {Policy: "admin-deny egress[1]", Direction: selectors.Egress},
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: got %+v, want %+v (all: %v)", k, got[k], w, counters)
		}
	}
}

// TestClusterPolicyDenyIsLoggedAndCounted sends real UDP packets inside
// the test's namespace (127.0.0.1 to itself: output, then the input hook,
// where input-egress applies the egress side) to a port an Admin
// ClusterNetworkPolicy denies: the denied-packet log names the policy and
// rule, the rule's counter counts it, and `nftpol dump` annotates the
// chain.
func TestClusterPolicyDenyIsLoggedAndCounted(t *testing.T) {
	ns := testNetns(t)
	if out, err := exec.Command("ip", "netns", "exec", filepath.Base(ns), "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	cfg := Config{Table: "nftpol", NetNSPath: ns, Deny: DenyDrop, LogDenied: true, LogGroup: 77, LogRate: 100}
	e := newTestNode(t, cfg)
	m := &selectors.Model{
		Pods: []selectors.PodRules{{Key: "x/self", IPs: mustAddrs("127.0.0.1"),
			Cluster: [2]selectors.ClusterTiers{selectors.Egress: {Admin: []string{"deny-udp"}}}}},
		ClusterPolicies: []selectors.ClusterPolicyRules{{Name: "deny-udp", Tier: selectors.TierAdmin, Priority: 3,
			Egress: []selectors.ClusterRule{{Name: "no-9999", Action: selectors.ActionDeny, Peers: selectors.PeerMatch{All: true},
				Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolUDP, First: 9999, Last: 9999}}}}}}},
	}
	if _, err := e.Sync(m); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan DeniedPacket, 16)
	readDone := make(chan error, 1)
	go func() {
		readDone <- ReadDenied(ctx, ns, cfg.LogGroup, func(p DeniedPacket) {
			select {
			case got <- p:
			default:
			}
		})
	}()
	var logged DeniedPacket
	deadline := time.Now().Add(10 * time.Second)
	for attempt := 0; attempt < 100 && logged.Policy == "" && time.Now().Before(deadline); attempt++ {
		// bash's /dev/udp sends one datagram; nothing listens, nothing needs to.
		_ = exec.Command("ip", "netns", "exec", filepath.Base(ns), "bash", "-c", "echo x > /dev/udp/127.0.0.1/9999").Run()
		select {
		case logged = <-got:
		case <-time.After(100 * time.Millisecond):
		}
	}
	cancel()
	if err := <-readDone; err != nil {
		t.Fatalf("ReadDenied: %v", err)
	}
	want := DeniedPacket{Direction: selectors.Egress, Src: netip.MustParseAddr("127.0.0.1"), Dst: netip.MustParseAddr("127.0.0.1"),
		Protocol: selectors.ProtocolUDP, Port: 9999, Policy: "deny-udp egress[0]:no-9999"}
	if logged != want {
		t.Fatalf("logged %+v, want %+v", logged, want)
	}
	counters, err := e.Counters()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, pc := range counters {
		if pc.Policy == "deny-udp egress[0]:no-9999" && pc.Direction == selectors.Egress && pc.DeniedPackets > 0 && pc.AllowedPackets == 0 {
			found = true
		}
	}
	if !found {
		t.Errorf("no denied count for the rule in %+v", counters)
	}
	back, err := e.ReadTable()
	if err != nil {
		t.Fatal(err)
	}
	if dump := back.String(); !strings.Contains(dump, "# ClusterNetworkPolicy Admin tier: deny-udp (egress)\n") {
		t.Errorf("dump lacks the CNP annotation:\n%s", dump)
	}
}
