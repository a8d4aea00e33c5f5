// Command demo shows nftpol at work on one machine: a real kube-apiserver
// and etcd, two simulated nodes with the upstream x/y/z × a/b/c pods in
// network namespaces, one agent per node, and the reachability matrix
// before and after the sample policies of config/samples are applied,
// then after an Admin-tier ClusterNetworkPolicy (admin-deny.yaml) denies
// what a namespace's policy allows. Each matrix marks what changed since
// the one before ("now blocked (was reachable)"); the demo fails only
// where the packets differ from the reference evaluator.
// Run it as root through `make demo`.
package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"

	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/test/testbed"
)

func main() {
	samples := flag.String("samples", "config/samples", "folder of NetworkPolicy YAML files to apply")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *samples); err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) { fmt.Printf(format+"\n", args...) }

func run(ctx context.Context, samplesDir string) error {
	start := time.Now()
	policies, err := readPolicies(samplesDir)
	if err != nil {
		return err
	}
	say("== starting kube-apiserver and etcd (envtest)")
	cp, err := testbed.StartControlPlane()
	if err != nil {
		return err
	}
	defer cp.Stop()

	say("== creating 2 nodes and 9 pods (namespaces x, y, z; pods a, b, c) as network namespaces")
	bed, err := testbed.New(ctx, cp, testbed.Options{Prefix: "nftpol-demo", Nodes: 2})
	if err != nil {
		return err
	}
	defer bed.Close()
	var pods []*testbed.Pod
	for i, ns := range []string{"x", "y", "z"} {
		if err := bed.EnsureNamespace(ctx, ns, map[string]string{"ns": ns}); err != nil {
			return err
		}
		for j, name := range []string{"a", "b", "c"} {
			p, err := bed.AddPod(ctx, testbed.PodSpec{Namespace: ns, Name: name, Node: bed.Nodes[(i+j)%2].Name, Labels: map[string]string{"pod": name}})
			if err != nil {
				return err
			}
			pods = append(pods, p)
		}
	}
	for _, p := range pods {
		say("   %-4s on %-20s %s  %s", p.Key(), p.Node, p.IPv4, p.IPv6)
	}

	logDir, err := os.MkdirTemp("", "nftpol-demo-logs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(logDir)
	say("== starting one nftpol agent per node (--netns <node>, --deny-action reject)")
	for _, n := range bed.Nodes {
		a, err := testbed.StartAgent(cp, n, logDir, "--deny-action", "reject")
		if err != nil {
			return err
		}
		defer a.Stop()
		if err := a.WaitReady(ctx, 30*time.Second); err != nil {
			return err
		}
	}

	spec := testbed.ProbeSpec{Family: 4, Proto: testbed.TCP, Port: 80, Timeout: time.Second}
	before := testbed.ProbeMatrix(ctx, pods, spec, 32)
	say("\n== reachability before any policy (%s; rows connect to columns; '.' reachable, 'X' blocked)", spec)
	fmt.Print(before)

	say("\n== applying %d sample policies from %s", len(policies), samplesDir)
	applied := time.Now()
	for _, p := range policies {
		if _, err := cp.Clientset.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating %s/%s: %w", p.Namespace, p.Name, err)
		}
		say("   %s/%s", p.Namespace, p.Name)
	}
	afterSamples, err := showChanges(ctx, cp, pods, spec, before, applied, "the sample policies")
	if err != nil {
		return err
	}

	admin, err := readAdminPolicy()
	if err != nil {
		return err
	}
	say("\n== applying the Admin-tier ClusterNetworkPolicy %s (test/demo/admin-deny.yaml):", admin.Name)
	say("   it denies y/b into namespace x, which the sample allow-from-namespace-y lets into x/a")
	applied = time.Now()
	if err := cp.Client.Create(ctx, admin); err != nil {
		return fmt.Errorf("creating %s: %w", admin.Name, err)
	}
	if _, err := showChanges(ctx, cp, pods, spec, afterSamples, applied, "the ClusterNetworkPolicy"); err != nil {
		return err
	}
	state, err := reference.Read(ctx, cp.Client)
	if err != nil {
		return err
	}
	from, to := findPod(pods, "y/b"), findPod(pods, "x/a")
	why := reference.Evaluate(state, reference.Packet{Src: from.IPv4, Dst: to.IPv4, Protocol: corev1.ProtocolTCP, Port: 80})
	say("   why, as `nftpol explain --from y/b --to x/a --port 80` tells it:")
	for _, line := range strings.Split(strings.TrimRight(why.Explain(), "\n"), "\n") {
		say("     %s", line)
	}

	for _, other := range []testbed.ProbeSpec{{Family: 6, Proto: testbed.TCP, Port: 80, Timeout: time.Second}, {Family: 4, Proto: testbed.UDP, Port: 80, Timeout: time.Second}} {
		want, err := evaluatorMatrix(ctx, cp, pods, other)
		if err != nil {
			return err
		}
		got := testbed.ProbeMatrix(ctx, pods, other, 32)
		if !got.Equal(want) {
			return fmt.Errorf("%s: the observed matrix differs from what the policies mean:\n%s", other, got.Diff(want))
		}
		say("   %s: agrees with the policies", other)
	}

	say(`
== what the policies do
   default-deny-ingress      nothing may connect into namespace x ...
   allow-from-namespace-y    ... except namespace y to x/a on TCP 80
   allow-egress-dns-and-y-b  z/c may only connect to DNS and to y/b on TCP 80
   ipblock-except            y/b accepts only 10.244.0.0/16 minus 10.244.1.0/24
                             (pods of the second node; its own node's pods are out)
   deny-y-b-to-x (Admin)     y/b may not connect into x, whatever x allows
   A pod always reaches itself: that traffic never leaves its namespace.
   Try: nft list table inet nftpol  inside a node namespace while the demo runs.`)
	say("\n== cleaning up (demo took %s)", time.Since(start).Round(time.Second))
	return nil
}

// readPolicies reads every NetworkPolicy of the YAML files in dir (not the
// kustomization), in file name order.
func readPolicies(dir string) ([]*networkingv1.NetworkPolicy, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	var out []*networkingv1.NetworkPolicy
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, doc := range bytes.Split(data, []byte("\n---")) {
			if len(bytes.TrimSpace(doc)) == 0 {
				continue
			}
			var p networkingv1.NetworkPolicy
			if err := yaml.UnmarshalStrict(doc, &p); err != nil {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			if p.Kind != "NetworkPolicy" {
				continue
			}
			out = append(out, &p)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no NetworkPolicy found in " + dir)
	}
	return out, nil
}

// showChanges probes until the matrix equals the reference evaluator's
// prediction (bounded), prints it with the cells that changed since
// before, and returns it. A difference from the prediction is the only
// failure.
func showChanges(ctx context.Context, cp *testbed.ControlPlane, pods []*testbed.Pod, spec testbed.ProbeSpec, before *testbed.Matrix, applied time.Time, what string) (*testbed.Matrix, error) {
	expected, err := evaluatorMatrix(ctx, cp, pods, spec)
	if err != nil {
		return nil, err
	}
	var after *testbed.Matrix
	for attempt := 0; attempt < 50; attempt++ {
		after = testbed.ProbeMatrix(ctx, pods, spec, 32)
		if after.Equal(expected) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	converged := time.Since(applied)
	say("\n== reachability after %s ('*' marks what changed, listed below)", what)
	fmt.Print(after.ChangesFrom(before))
	if !after.Equal(expected) {
		return nil, fmt.Errorf("FAILED: the observed matrix differs from what the policies mean (the reference evaluator):\n%s", after.Diff(expected))
	}
	say("   observed matrix equals the reference evaluator's; in force %s after the API writes", converged.Round(time.Millisecond))
	return after, nil
}

//go:embed admin-deny.yaml
var adminDenyYAML []byte

// readAdminPolicy reads the demo's ClusterNetworkPolicy.
func readAdminPolicy() (*policyv1beta1.ClusterNetworkPolicy, error) {
	var p policyv1beta1.ClusterNetworkPolicy
	if err := yaml.UnmarshalStrict(adminDenyYAML, &p); err != nil {
		return nil, fmt.Errorf("admin-deny.yaml: %w", err)
	}
	return &p, nil
}

func findPod(pods []*testbed.Pod, key string) *testbed.Pod {
	for _, p := range pods {
		if p.Key() == key {
			return p
		}
	}
	return nil
}

// evaluatorMatrix is what the reference evaluator predicts for spec.
func evaluatorMatrix(ctx context.Context, cp *testbed.ControlPlane, pods []*testbed.Pod, spec testbed.ProbeSpec) (*testbed.Matrix, error) {
	state, err := reference.Read(ctx, cp.Client)
	if err != nil {
		return nil, err
	}
	return testbed.PredictMatrix(state, pods, spec), nil
}
