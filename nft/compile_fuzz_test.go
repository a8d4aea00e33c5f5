package nft

import (
	"fmt"
	"math/rand"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/nftables/expr"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// checkTablesAgree compiles the table of every node of cl and runs every
// packet of selectorstest.Packets through the tables of the nodes it
// passes, with the interpreter: the verdict must be the reference
// evaluator's, which reads the API objects themselves while the model is
// built from the agent's conversion of them. It also checks what every
// table must let through whatever the policies: packets of established
// connections, and neighbour discovery from a pod to its node.
func checkTablesAgree(t *testing.T, cl *reference.Cluster, cfg Config) {
	t.Helper()
	s := selectorstest.State(cl)
	tables := map[string]*kernelTable{}
	rulesets := map[string]*Ruleset{}
	// walks is the same table with every isolation chain a walk of jumps,
	// when cfg asks for the lookup layout: the policy rule that accepts a
	// packet must be the same in both (lookup.go keeps per-rule counters).
	var walks map[string]*kernelTable
	if cfg.LookupMinPolicies == 1 {
		walks = map[string]*kernelTable{}
	}
	for _, node := range selectorstest.Nodes() {
		m, _ := selectors.BuildModel(node, s)
		rulesets[node] = Compile(m, cfg)
		tables[node] = toKernel(rulesets[node])
		if walks != nil {
			walk := cfg
			walk.LookupMinPolicies = 1 << 30
			walks[node] = toKernel(Compile(m, walk))
		}
	}
	places := selectorstest.Places(cl)
	for _, pk := range selectorstest.Packets(cl) {
		want := reference.Evaluate(cl, pk.Reference())
		for _, established := range []bool{false, true} {
			w := newWirePacket(pk)
			if established {
				w.ctState = expr.CtStateBitESTABLISHED
			}
			got, trace := true, []string{}
			var where string
			for _, hop := range selectorstest.Hops(places, pk) {
				ok, err := tables[hop.Node].run(string(hop.Hook), w, &trace)
				if err != nil {
					t.Fatalf("%s at %s/%s: %v", pk, hop.Node, hop.Hook, err)
				}
				if !ok {
					got, where = false, fmt.Sprintf("%s/%s", hop.Node, hop.Hook)
					break
				}
			}
			if walks != nil && !established {
				checkSameAccepts(t, walks, places, pk, trace)
			}
			switch {
			case established && !got:
				t.Fatalf("an established packet %s is dropped at %s:\n%s", pk, where, describeTrace(trace))
			case !established && got != want.Allowed:
				t.Fatalf("the tables say allowed=%v (dropped at %q), the evaluator %v for %s\nrules that matched:\n%s\nevaluator:\n%s\ntables:\n%s\ncluster:%s",
					got, where, want.Allowed, pk, describeTrace(trace), want.Explain(), describeTables(rulesets), selectorstest.Describe(cl))
			}
		}
	}
	for _, p := range s.Pods {
		if !p.IsEndpoint() {
			continue
		}
		for _, ip := range p.IPs {
			for _, nodeIP := range cl.NodeAddresses[p.NodeName] {
				if !ip.Is6() || !nodeIP.Is6() {
					continue
				}
				var trace []string
				ok, err := tables[p.NodeName].run(string(selectorstest.HookInput), ndPacket(ip, nodeIP), &trace)
				if err != nil || !ok {
					t.Fatalf("neighbour solicitation from %s to its node %s: allowed=%v, err=%v\n%s", p.Key(), nodeIP, ok, err, describeTrace(trace))
				}
			}
		}
	}
}

// checkSameAccepts runs pk through the walk tables and demands that the
// policy chain rules that matched be those that matched in trace.
func checkSameAccepts(t *testing.T, walks map[string]*kernelTable, places map[netip.Addr]selectorstest.Place, pk selectorstest.Packet, trace []string) {
	t.Helper()
	var walkTrace []string
	for _, hop := range selectorstest.Hops(places, pk) {
		ok, err := walks[hop.Node].run(string(hop.Hook), newWirePacket(pk), &walkTrace)
		if err != nil {
			t.Fatalf("%s at %s/%s in the walk layout: %v", pk, hop.Node, hop.Hook, err)
		}
		if !ok {
			break
		}
	}
	if got, want := policyRulesOf(trace), policyRulesOf(walkTrace); !slices.Equal(got, want) {
		t.Fatalf("%s: the lookup layout accepts by\n%s\nthe walk by\n%s", pk, describeTrace(got), describeTrace(want))
	}
}

func describeTables(rulesets map[string]*Ruleset) string {
	out := ""
	for _, node := range selectorstest.Nodes() {
		out += fmt.Sprintf("--- %s\n%s", node, rulesets[node].String())
	}
	return out
}

// configFor varies what the compiler is told: deny action and logging.
func configFor(c *selectorstest.Choices) Config {
	cfg := Config{Table: "nftpol", Deny: DenyDrop}
	if c.Intn(2) == 1 {
		cfg.Deny = DenyReject
	}
	if c.Intn(2) == 1 {
		cfg.LogDenied, cfg.LogGroup, cfg.LogRate = true, 100, 10
	}
	if c.Intn(2) == 1 {
		// Every isolation chain in the lookup layout (lookup.go).
		cfg.LookupMinPolicies = 1
	}
	return cfg
}

func TestCompiledTablesAgreeWithEvaluator(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		c := selectorstest.RandomChoices(r, 1024)
		checkTablesAgree(t, selectorstest.RandomCluster(c), configFor(c))
	}
}

// FuzzCompiledTablesAgreeWithEvaluate: the compiled nftables table decides
// like the reference evaluator on random clusters and packets. The
// fuzzer's bytes are the generator's choices (selectorstest.Choices), then
// the compiler's configuration, so coverage guidance steers both.
func FuzzCompiledTablesAgreeWithEvaluate(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		c := selectorstest.NewChoices(data)
		checkTablesAgree(t, selectorstest.RandomCluster(c), configFor(c))
	})
}
