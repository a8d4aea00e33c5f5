package nft

import (
	"fmt"
	"math/rand"
	"testing"

	"github.com/google/nftables/expr"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// checkTablesAgree compiles the table of every node of s and runs every
// packet of selectorstest.Packets through the tables of the nodes it
// passes, with the interpreter: the verdict must be the reference
// evaluator's. It also checks what every table must let through whatever
// the policies: packets of established connections, and neighbour
// discovery from a pod to its node.
func checkTablesAgree(t *testing.T, s *selectors.State, cfg Config) {
	t.Helper()
	tables := map[string]*kernelTable{}
	rulesets := map[string]*Ruleset{}
	for _, node := range selectorstest.Nodes() {
		m, _ := selectors.BuildModel(node, s)
		rulesets[node] = Compile(m, cfg)
		tables[node] = toKernel(rulesets[node])
	}
	places := selectorstest.Places(s)
	for _, pk := range selectorstest.Packets(s) {
		want := selectors.Evaluate(s, pk)
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
			switch {
			case established && !got:
				t.Fatalf("an established packet %s is dropped at %s:\n%s", pk, where, describeTrace(trace))
			case !established && got != want.Allowed:
				t.Fatalf("the tables say allowed=%v (dropped at %q), the evaluator %v for %s\nrules that matched:\n%s\nevaluator:\n%s\ntables:\n%s",
					got, where, want.Allowed, pk, describeTrace(trace), want.Explain(), describeTables(rulesets))
			}
		}
	}
	for _, p := range s.Pods {
		if !p.IsEndpoint() {
			continue
		}
		for _, ip := range p.IPs {
			for _, nodeIP := range s.NodeIPs[p.NodeName] {
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

func describeTables(rulesets map[string]*Ruleset) string {
	out := ""
	for _, node := range selectorstest.Nodes() {
		out += fmt.Sprintf("--- %s\n%s", node, rulesets[node].String())
	}
	return out
}

// configFor varies what the compiler is told: deny action and logging.
func configFor(r *rand.Rand) Config {
	cfg := Config{Table: "nftpol", Deny: DenyDrop}
	if r.Intn(2) == 0 {
		cfg.Deny = DenyReject
	}
	if r.Intn(2) == 0 {
		cfg.LogDenied, cfg.LogGroup, cfg.LogRate = true, 100, 10
	}
	return cfg
}

func TestCompiledTablesAgreeWithEvaluator(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		checkTablesAgree(t, selectorstest.RandomCluster(r), configFor(r))
	}
}

// FuzzCompiledTablesAgreeWithEvaluate: the compiled nftables table decides
// like the reference evaluator on random clusters and packets.
func FuzzCompiledTablesAgreeWithEvaluate(f *testing.F) {
	f.Fuzz(func(t *testing.T, seed int64) {
		r := rand.New(rand.NewSource(seed))
		checkTablesAgree(t, selectorstest.RandomCluster(r), configFor(r))
	})
}
