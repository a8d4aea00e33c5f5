package upstream_test

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"

	"github.com/nftpol/nftpol/test/cluster"
	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/upstream"
)

// subset is the part of the upstream suite `make test` runs: one spec per
// kind of rule the agent compiles. Each entry must select exactly the
// specs it names (the test checks), so a renamed spec fails loudly
// instead of silently dropping out.
var subset = []string{
	// default deny, ingress and egress
	`NetworkPolicy between server and client should support a 'default-deny-ingress' policy`,
	`should deny egress from all pods in a namespace`,
	// pod and namespace selectors
	`should enforce policy based on PodSelector with MatchExpressions`,
	`should enforce policy to allow traffic only from a different namespace, based on NamespaceSelector`,
	// egress to a pod in another namespace
	`should enforce egress policy allowing traffic to a server in a different namespace based on PodSelector and NamespaceSelector`,
	// ipBlock with except
	`should enforce except clause while egress access to server in CIDR block`,
	// named port
	`should allow ingress access on one named port`,
	// UDP, and a rule on one of two ports
	`NetworkPolicy between server and client using UDP should enforce policy based on Ports`,
	// port ranges (endPort), through the API
	`should support creating NetworkPolicy API with endport field`,
}

// prefix names the test cluster's namespaces; NFTPOL_TEST_CLUSTER_PREFIX
// overrides it, as in package cluster's tests.
func prefix() string {
	if p := os.Getenv("NFTPOL_TEST_CLUSTER_PREFIX"); p != "" {
		return p
	}
	return "nftup"
}

// TestUpstreamNetpolSubset runs the subset of the upstream Netpol suite
// against a 2-node local cluster with the agent enforcing, and fails when
// any selected spec does not pass.
func TestUpstreamNetpolSubset(t *testing.T) {
	kerneltest.Require(t, kerneltest.ControlPlane, kerneltest.NftBinary)
	assets := cluster.AssetsFromEnv()
	suite := upstream.SuiteFromEnv()
	for _, reason := range []string{assets.Missing(true), suite.Missing()} {
		if reason == "" {
			continue
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot run under CI=true: %s", reason)
		}
		t.Skip(reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{
		Prefix: prefix(), Nodes: 2, Assets: assets,
		Log: funcr.New(func(p, args string) { t.Log(p, args) }, funcr.Options{}),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()

	focus := make([]string, len(subset))
	for i, name := range subset {
		focus[i] = regexp.QuoteMeta(name)
	}
	// ginkgo's output (every probe, every dump) goes to a file kept with
	// the cluster's logs; a failure prints its end.
	dir := filepath.Join(c.Dir, "upstream")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	outPath := filepath.Join(dir, "ginkgo.log")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	logOutput := func() {
		b, _ := os.ReadFile(outPath)
		if len(b) > 20000 {
			b = b[len(b)-20000:]
		}
		t.Logf("end of ginkgo's output (all of it in %s):\n%s", outPath, b)
	}
	res, err := upstream.Run(ctx, suite, upstream.Options{
		Kubeconfig: c.Kubeconfig, Focus: focus, Procs: 2,
		Dir: dir, Timeout: 12 * time.Minute, Output: out,
	})
	if err != nil {
		logOutput()
		t.Fatal(err)
	}
	var summary strings.Builder
	res.Summary(&summary, "upstream Netpol suite")
	t.Log(summary.String())

	ran := map[string]int{}
	for _, s := range res.Specs {
		if s.State == "skipped" {
			continue
		}
		for _, name := range subset {
			if strings.Contains(s.Name, name) {
				ran[name]++
			}
		}
		if s.State != "passed" {
			t.Errorf("%s: %s: %s", s.Name, s.State, s.Reason)
		}
	}
	for _, name := range subset {
		if ran[name] != 1 {
			t.Errorf("%d specs ran for %q, want 1", ran[name], name)
		}
	}
	if t.Failed() {
		logOutput()
		t.Log(c.Logs(4000))
	}
}
