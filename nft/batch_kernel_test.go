package nft

import (
	"net/netip"
	"testing"
)

// TestRefusedBatchKeepsTheTable: the batch asks for one acknowledgement
// only (batch.go), so a message the kernel refuses must still fail the
// commit, wherever it sits in the batch, and the kernel must keep the
// table it had, which the next commit then replaces whole.
func TestRefusedBatchKeepsTheTable(t *testing.T) {
	for _, tc := range []struct {
		name, chain string
	}{
		// Chains are added in name order: first and last of the batch's
		// chains, with the element and rule messages of the sync around.
		{"early in the batch", "aaa-broken"},
		{"late in the batch", "zzz-broken"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := testNetns(t)
			e := newTestEnforcer(t, ns, DenyDrop)
			m := sampleModel()
			if _, err := e.Sync(m); err != nil {
				t.Fatal(err)
			}
			before := e.Committed()
			m.AddrSets[1].Addrs = append(m.AddrSets[1].Addrs, netip.MustParseAddr("10.0.1.3"))
			bad := e.compiler.Compile(m)
			bad.chains[tc.chain] = &chainSpec{name: tc.chain, rules: []ruleSpec{{verdict: verdictJump, target: "no-such-chain"}}}
			if _, err := e.Commit(bad); err == nil {
				t.Fatal("a batch with a jump to a missing chain committed")
			}
			got, err := e.ReadTable()
			if err != nil {
				t.Fatal(err)
			}
			if err := compareRulesets(before, got); err != nil {
				t.Fatalf("after the refused batch the table is not the one before it: %v", err)
			}
			// The next commit is whole and verifies.
			if _, err := e.Sync(m); err != nil {
				t.Fatal(err)
			}
			if err := e.Verify(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestReadBackAnnotations: a table read back from the kernel tells, as
// the compiled one does, which chains are NetworkPolicy chains (policy and
// isolation chains, no tier) and which are ClusterNetworkPolicy tiers, so
// that `nftpol dump` and the counters name them right.
func TestReadBackAnnotations(t *testing.T) {
	e := newTestEnforcer(t, testNetns(t), DenyDrop)
	m := everyKindModel()
	want := e.compiler.Compile(m)
	if _, err := e.Commit(want); err != nil {
		t.Fatal(err)
	}
	got, err := e.ReadTable()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range want.sortedChainNames() {
		w, g := want.chains[name], got.chains[name]
		if g == nil {
			t.Fatalf("chain %s not read back", name)
		}
		if g.tier != w.tier || g.isolates != w.isolates || (len(w.policies) > 0 && g.dir != w.dir) {
			t.Errorf("chain %s read back as tier %v isolates %v dir %v, compiled as tier %v isolates %v dir %v",
				name, g.tier, g.isolates, g.dir, w.tier, w.isolates, w.dir)
		}
	}
}

// TestBatchSocketKeptAndRedialed: commits share one netlink socket
// (batch.go), which must never carry anything of one batch into the next:
// a socket that broke since the last commit is replaced and the batch
// sent again, and after a refused batch (whose error replies may still be
// unread) the next batch goes out on a new socket. Each commit is checked
// against the kernel's table.
func TestBatchSocketKeptAndRedialed(t *testing.T) {
	e := newTestEnforcer(t, testNetns(t), DenyDrop)
	m := sampleModel()
	commit := func(step string, addr string) {
		t.Helper()
		m.AddrSets[1].Addrs = append(m.AddrSets[1].Addrs, netip.MustParseAddr(addr))
		if _, err := e.Sync(m); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if err := e.Verify(); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
	}
	commit("first commit", "10.0.1.10")
	first := e.batches
	if first == nil {
		t.Fatal("no socket kept after a commit")
	}
	commit("second commit", "10.0.1.11")
	if e.batches != first {
		t.Fatal("the second commit dialed a new socket")
	}
	// Broken under the enforcer: the next commit must not fail for it.
	_ = first.Close()
	commit("commit after the socket broke", "10.0.1.12")

	// Two refused messages: the first error ends the wait, the second
	// stays unread on that socket.
	bad := e.compiler.Compile(m)
	for _, name := range []string{"aaa-broken", "zzz-broken"} {
		bad.chains[name] = &chainSpec{name: name, rules: []ruleSpec{{verdict: verdictJump, target: "no-such-chain"}}}
	}
	if _, err := e.Commit(bad); err == nil {
		t.Fatal("a batch with jumps to a missing chain committed")
	}
	commit("commit after a refused batch", "10.0.1.13")
	commit("commit after that", "10.0.1.14")
}
