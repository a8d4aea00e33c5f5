// Command run starts the local cluster (package cluster), runs the
// upstream Netpol suite against it (package upstream) and, with -cnp, the
// ClusterNetworkPolicy conformance suite of network-policy-api, prints
// each summary and writes the results file; `make conformance-upstream`
// runs it as root. It exits 1 when a spec failed.
package main

import (
	"bytes"
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

type config struct {
	nodes, procs                    int
	prefix, focus, results          string
	k8sVersion, npapiVersion, agent string
	noAgent, cnp                    bool
}

func main() {
	var c config
	flag.IntVar(&c.nodes, "nodes", 2, "number of nodes")
	flag.StringVar(&c.prefix, "prefix", "nftup", "prefix of the cluster's namespaces and node names")
	flag.IntVar(&c.procs, "procs", 2, "ginkgo processes running Netpol specs at once")
	flag.StringVar(&c.focus, "focus", "", "regular expression selecting Netpol specs (default: the whole suite)")
	flag.StringVar(&c.results, "results", "", "write the results file (Markdown) here")
	flag.StringVar(&c.k8sVersion, "kubernetes-version", "", "version of the Netpol suite, for the results file")
	flag.StringVar(&c.npapiVersion, "network-policy-api-version", "", "version of the CNP suite, for the results file")
	flag.StringVar(&c.agent, "agent-version", "dev", "the agent's version, for the CNP suite's report")
	flag.BoolVar(&c.noAgent, "no-agent", false, "leave the nftpol agent out (the specs that expect a denial must then fail)")
	flag.BoolVar(&c.cnp, "cnp", false, "also run the ClusterNetworkPolicy conformance suite of network-policy-api")
	flag.Parse()
	if err := run(c); err != nil {
		fmt.Fprintln(os.Stderr, "conformance-upstream:", err)
		os.Exit(1)
	}
}

func run(cfg config) error {
	log := funcr.New(func(prefix, args string) {
		fmt.Fprintln(os.Stderr, time.Now().Format(time.TimeOnly), prefix, args)
	}, funcr.Options{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	suite := upstream.SuiteFromEnv()
	if reason := suite.Missing(); reason != "" {
		return fmt.Errorf("%s", reason)
	}
	cnpSuite := upstream.CNPSuiteFromEnv()
	if reason := cnpSuite.Missing(); cfg.cnp && reason != "" {
		return fmt.Errorf("%s", reason)
	}
	assets := cluster.AssetsFromEnv()
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	c, err := cluster.Start(startCtx, cluster.Options{
		Prefix: cfg.prefix, Nodes: cfg.nodes, Assets: assets, NoAgent: cfg.noAgent, Log: log,
	})
	if err != nil {
		return fmt.Errorf("starting the cluster: %w", err)
	}
	defer c.Stop()

	m := upstream.ReadMachine()
	m.Cluster = fmt.Sprintf("%d nodes, kube-proxy nftables, nftpol agent per node", cfg.nodes)
	if cfg.noAgent {
		m.Cluster = fmt.Sprintf("%d nodes, kube-proxy nftables, no policy enforcement", cfg.nodes)
	}
	var results bytes.Buffer
	fmt.Fprintf(&results, "# Upstream conformance suites on the local cluster\n\n")
	fmt.Fprintf(&results, "Written by `make conformance-upstream` (test/upstream/run); do not edit.\n\n")
	failed := 0

	dir := filepath.Join(c.Dir, "upstream")
	opts := upstream.Options{Kubeconfig: c.Kubeconfig, Procs: cfg.procs, Dir: dir, Output: os.Stdout}
	if cfg.focus != "" {
		opts.Focus = []string{cfg.focus}
	}
	began := time.Now()
	res, err := upstream.Run(ctx, suite, opts)
	if err != nil {
		return fmt.Errorf("running the Netpol suite (cluster logs in %s): %w", c.LogDir, err)
	}
	fmt.Println()
	res.Summary(os.Stdout, "upstream Netpol suite")
	failed += res.Failed()
	res.WriteResults(&results, "Kubernetes NetworkPolicy e2e ([sig-network] Netpol)", fmt.Sprintf(
		"The `[sig-network] Netpol` specs of k8s.io/kubernetes %s, compiled unmodified\n"+
			"(test/upstream/build-e2e.sh), run by ginkgo against the local cluster\n"+
			"(test/cluster) with the nftpol agent enforcing NetworkPolicy.", cfg.k8sVersion), m, began)

	if cfg.cnp {
		began := time.Now()
		res, err := upstream.RunCNP(ctx, cnpSuite, upstream.CNPOptions{
			Kubeconfig: c.Kubeconfig, Kubectl: filepath.Join(assets.Cluster, "kubectl"),
			Dir: dir, Version: cfg.agent, Output: os.Stdout,
		})
		if err != nil {
			return fmt.Errorf("running the ClusterNetworkPolicy suite (cluster logs in %s): %w", c.LogDir, err)
		}
		fmt.Println()
		res.Summary(os.Stdout, "network-policy-api ClusterNetworkPolicy conformance")
		failed += res.Failed()
		res.WriteResults(&results, "ClusterNetworkPolicy conformance (network-policy-api)", fmt.Sprintf(
			"The conformance suite of sigs.k8s.io/network-policy-api %s (conformance/),\n"+
				"compiled unmodified, run with the ClusterNetworkPolicy profile (standard and\n"+
				"experimental features) against the same cluster; SCTP tests skipped.", cfg.npapiVersion), m, began)
	}

	if cfg.results != "" {
		if err := os.WriteFile(cfg.results, results.Bytes(), 0o644); err != nil {
			return fmt.Errorf("writing the results: %w", err)
		}
		fmt.Println("results written to", cfg.results)
	}
	if failed > 0 {
		return fmt.Errorf("%d specs failed (cluster logs in %s, suite output in %s)", failed, c.LogDir, dir)
	}
	return nil
}
