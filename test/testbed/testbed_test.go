package testbed

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/test/kerneltest"
)

const prefix = "nftpol-tbt"

func TestMatrixDiff(t *testing.T) {
	keys := []string{"x/a", "x/b"}
	want := NewMatrix(keys, true)
	got := NewMatrix(keys, true)
	if !got.Equal(want) {
		t.Fatal("equal matrices differ")
	}
	got.Set("x/a", "x/b", false)
	wrong := got.Wrong(want)
	if len(wrong) != 1 || !strings.Contains(wrong[0], "x/a -> x/b: observed blocked") {
		t.Fatalf("wrong = %v", wrong)
	}
	if d := got.Diff(want); !strings.Contains(d, "X*") {
		t.Fatalf("diff does not mark the cell:\n%s", d)
	}
}

// TestMatrixChangesReadAsChanges: the changes from an earlier matrix (the
// demo's before and after) say what changed, in words no one can take for
// a failure; only Wrong, against an expectation, says "expected".
func TestMatrixChangesReadAsChanges(t *testing.T) {
	keys := []string{"x/a", "x/b"}
	before := NewMatrix(keys, true)
	after := NewMatrix(keys, true)
	if got := after.ChangesFrom(before); !strings.Contains(got, "(no cell changed)") {
		t.Fatalf("no change reads:\n%s", got)
	}
	after.Set("x/a", "x/b", false)
	before.Set("x/b", "x/a", false)
	changes := after.Changes(before)
	want := []string{"x/a -> x/b: now blocked (was reachable)", "x/b -> x/a: now reachable (was blocked)"}
	if strings.Join(changes, "\n") != strings.Join(want, "\n") {
		t.Fatalf("changes = %q, want %q", changes, want)
	}
	out := after.ChangesFrom(before)
	for _, failureWord := range []string{"expected", "observed", "wrong", "fail"} {
		if strings.Contains(strings.ToLower(out), failureWord) {
			t.Errorf("the changes read like a failure (%q):\n%s", failureWord, out)
		}
	}
	if !strings.Contains(out, "X*") || !strings.Contains(out, ".*") {
		t.Errorf("the changed cells are not marked:\n%s", out)
	}
}

// smallBed: namespaces x and y, pods a and b in each, spread so that every
// pod has a same-node and a cross-node peer.
func smallBed(t *testing.T) (*ControlPlane, *Bed, []*Pod) {
	cp := StartControlPlaneT(t)
	b := NewT(t, cp, Options{Prefix: prefix, Nodes: 2})
	ctx := context.Background()
	var pods []*Pod
	for i, spec := range []PodSpec{
		{Namespace: "x", Name: "a"}, {Namespace: "x", Name: "b"},
		{Namespace: "y", Name: "a"}, {Namespace: "y", Name: "b"},
	} {
		if err := b.EnsureNamespace(ctx, spec.Namespace, map[string]string{"ns": spec.Namespace}); err != nil {
			t.Fatal(err)
		}
		spec.Node = b.Nodes[i%2].Name
		spec.Labels = map[string]string{"pod": spec.Name}
		p, err := b.AddPod(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
	}
	return cp, b, pods
}

var allSpecs = func() []ProbeSpec {
	var out []ProbeSpec
	for _, fam := range []int{4, 6} {
		for _, proto := range []Proto{TCP, UDP} {
			for _, port := range []int{80, 81} {
				out = append(out, ProbeSpec{Family: fam, Proto: proto, Port: port, Timeout: time.Second})
			}
		}
	}
	return out
}()

func TestEverythingReachableWithoutPolicies(t *testing.T) {
	_, _, pods := smallBed(t)
	keys := make([]string, len(pods))
	for i, p := range pods {
		keys[i] = p.Key()
	}
	for _, spec := range allSpecs {
		got := ProbeMatrix(context.Background(), pods, spec, 16)
		if want := NewMatrix(keys, true); !got.Equal(want) {
			t.Errorf("%s:\n%s", spec, got.Diff(want))
		}
	}
}

// TestHandWrittenDropIsSeen proves the probes can fail: a drop rule in one
// node's namespace for TCP port 81 to pod y/b causes exactly those denials.
func TestHandWrittenDropIsSeen(t *testing.T) {
	_, b, pods := smallBed(t)
	target := b.Pod("y/b")
	node := b.Node(target.Node)

	f, err := os.Open(node.NetNSPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	table := c.AddTable(&nftables.Table{Name: "tbtest", Family: nftables.TableFamilyINet})
	chain := c.AddChain(&nftables.Chain{Name: "fwd", Table: table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	for _, dst := range [][]byte{target.IPv4.AsSlice(), target.IPv6.AsSlice()} {
		off, proto := uint32(16), byte(unix.NFPROTO_IPV4)
		if len(dst) == 16 {
			off, proto = 24, unix.NFPROTO_IPV6
		}
		c.AddRule(&nftables.Rule{Table: table, Chain: chain, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(dst))},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: dst},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0, 81}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}})
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("adding the drop rule: %v", err)
	}

	keys := make([]string, len(pods))
	for i, p := range pods {
		keys[i] = p.Key()
	}
	for _, spec := range allSpecs {
		want := NewMatrix(keys, true)
		if spec.Proto == TCP && spec.Port == 81 {
			// Everything that crosses the node's forward hook to y/b; the
			// pod itself talks to itself over its own loopback.
			for _, k := range keys {
				if k != "y/b" {
					want.Set(k, "y/b", false)
				}
			}
		}
		spec.Timeout = 300 * time.Millisecond
		got := ProbeMatrix(context.Background(), pods, spec, 16)
		if !got.Equal(want) {
			t.Errorf("%s:\n%s", spec, got.Diff(want))
		}
	}
}

func TestMain(m *testing.M) {
	code := m.Run()
	// Nothing of ours may survive the tests.
	entries, _ := os.ReadDir(kerneltest.NetnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			os.Stderr.WriteString("leftover network namespace: " + e.Name() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
