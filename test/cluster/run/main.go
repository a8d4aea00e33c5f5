// Command run starts the local cluster (package cluster) and keeps it up
// until Ctrl-C or SIGTERM; `make cluster` runs it as root with the asset
// locations exported.
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
)

func main() {
	nodes := flag.Int("nodes", 2, "number of nodes")
	prefix := flag.String("prefix", "nftcl", "prefix of the cluster's namespaces and node names")
	proxyMode := flag.String("proxy-mode", "nftables", "kube-proxy mode: nftables, or iptables (needs the iptables commands)")
	noAgent := flag.Bool("no-agent", false, "do not install the nftpol agent (kubectl apply -k config/default)")
	cni := flag.String("cni", "ptp", "CNI plugin linking pods to their node: ptp or bridge")
	flag.Parse()

	log := funcr.New(func(prefix, args string) {
		fmt.Fprintln(os.Stderr, time.Now().Format(time.TimeOnly), prefix, args)
	}, funcr.Options{})
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	c, err := cluster.Start(ctx, cluster.Options{
		Prefix: *prefix, Nodes: *nodes, ProxyMode: *proxyMode, NoAgent: *noAgent, CNI: *cni,
		Assets: cluster.AssetsFromEnv(), Log: log,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
	kubectl := filepath.Join(cluster.AssetsFromEnv().Cluster, "kubectl")
	fmt.Printf(`
The cluster is up: %d nodes, logs in %s.

  export KUBECONFIG=%s
  alias kubectl=%s
  kubectl get nodes -o wide
  kubectl -n nftpol-system get pods -o wide    # the agent (kubectl apply -k config/default)
  kubectl create deployment web --image=registry.k8s.io/e2e-test-images/agnhost:2.53 --replicas=2 -- /agnhost netexec --http-port=8080
  kubectl expose deployment web --port=80 --target-port=8080
  kubectl exec deploy/web -- curl -s http://$(kubectl get svc web -o jsonpath='{.spec.clusterIP}')/hostname

Pods are network namespaces (ip netns list); images map to binaries built
from source; there is no cluster DNS (README, "A real cluster on one
machine"). Ctrl-C stops everything.
`, len(c.Nodes), c.LogDir, c.Kubeconfig, kubectl)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "stopping the cluster")
	c.Stop()
}
