// Command run starts the local cluster (package cluster), runs the
// upstream Netpol suite against it (package upstream), prints the summary
// and writes the results file; `make conformance-upstream` runs it as
// root. It exits 1 when a spec failed.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/go-logr/logr/funcr"

	"github.com/nftpol/nftpol/test/cluster"
	"github.com/nftpol/nftpol/test/upstream"
)

func main() {
	nodes := flag.Int("nodes", 2, "number of nodes")
	prefix := flag.String("prefix", "nftup", "prefix of the cluster's namespaces and node names")
	procs := flag.Int("procs", 2, "ginkgo processes running specs at once")
	focus := flag.String("focus", "", "regular expression selecting specs (default: the whole Netpol suite)")
	results := flag.String("results", "", "write the results file (Markdown) here")
	k8sVersion := flag.String("kubernetes-version", "", "version of the suite, for the results file")
	noAgent := flag.Bool("no-agent", false, "leave the nftpol agent out (the specs that expect a denial must then fail)")
	flag.Parse()
	if err := run(*nodes, *prefix, *procs, *focus, *results, *k8sVersion, *noAgent); err != nil {
		fmt.Fprintln(os.Stderr, "conformance-upstream:", err)
		os.Exit(1)
	}
}

func run(nodes int, prefix string, procs int, focus, results, k8sVersion string, noAgent bool) error {
	log := funcr.New(func(prefix, args string) {
		fmt.Fprintln(os.Stderr, time.Now().Format(time.TimeOnly), prefix, args)
	}, funcr.Options{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	suite := upstream.SuiteFromEnv()
	if reason := suite.Missing(); reason != "" {
		return fmt.Errorf("%s", reason)
	}
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := cluster.Start(startCtx, cluster.Options{
		Prefix: prefix, Nodes: nodes, Assets: cluster.AssetsFromEnv(), NoAgent: noAgent, Log: log,
	})
	if err != nil {
		return fmt.Errorf("starting the cluster: %w", err)
	}
	defer c.Stop()

	opts := upstream.Options{
		Kubeconfig: c.Kubeconfig, Procs: procs,
		Dir: filepath.Join(c.Dir, "upstream"), Output: os.Stdout,
	}
	if focus != "" {
		opts.Focus = []string{focus}
	}
	began := time.Now()
	res, err := upstream.Run(ctx, suite, opts)
	if err != nil {
		return fmt.Errorf("running the suite (cluster logs in %s): %w", c.LogDir, err)
	}
	fmt.Println()
	res.Summary(os.Stdout)
	if results != "" {
		m := upstream.ReadMachine()
		m.Kubernetes = k8sVersion
		m.Cluster = fmt.Sprintf("%d nodes, kube-proxy nftables, nftpol agent per node", nodes)
		if noAgent {
			m.Cluster = fmt.Sprintf("%d nodes, kube-proxy nftables, no NetworkPolicy enforcement", nodes)
		}
		f, err := os.Create(results)
		if err != nil {
			return fmt.Errorf("writing the results: %w", err)
		}
		res.WriteResults(f, m, began)
		if err := f.Close(); err != nil {
			return fmt.Errorf("writing the results: %w", err)
		}
		fmt.Println("results written to", results)
	}
	if res.Failed() > 0 {
		return fmt.Errorf("%d specs failed (cluster logs in %s, suite output in %s)", res.Failed(), c.LogDir, opts.Dir)
	}
	return nil
}
