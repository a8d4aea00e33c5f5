package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftpol/nftpol/test/netnskubelet"
)

// Options shape a cluster.
type Options struct {
	// Prefix names the cluster's network namespaces ("<prefix>-n1", pods
	// "<prefix>-p-…") and nodes ("<prefix>-node-1"). One prefix per
	// package or command, so two clusters never collide. Default "nftcl".
	Prefix string
	// Nodes is the number of nodes, 1 to 200 (default 2).
	Nodes int
	// Dir holds the kubeconfig, certificates, etcd's data and every log.
	// Default: /tmp/nftpol-cluster-<prefix>. A start first removes what an
	// earlier run with the same directory left (processes naming it in
	// their flags, the prefix's namespaces).
	Dir string
	// Assets are the binaries to run.
	Assets Assets
	// ProxyMode is kube-proxy's mode (default nftables).
	ProxyMode string
	// CNI is the plugin linking pods to their node: "ptp" (default, a
	// routed link per pod) or "bridge" (one bridge per node).
	CNI string
	// NoAgent leaves the nftpol agent out; otherwise it is installed as
	// users install it, kubectl apply -k Manifests.
	NoAgent bool
	// Manifests is the kustomization the agent is installed from with
	// `kubectl apply -k`. Default: config/default of the nftpol module
	// the working directory is in.
	Manifests string
	// Log receives progress (what starts, how long it took).
	Log logr.Logger
}

// Assets are where the cluster's binaries are.
type Assets struct {
	// ControlPlane holds kube-apiserver and etcd ($KUBEBUILDER_ASSETS).
	ControlPlane string
	// Cluster holds kube-controller-manager, kube-scheduler, kube-proxy,
	// kubectl, agnhost and the CNI plugins ($NFTPOL_CLUSTER_ASSETS).
	Cluster string
	// Agent is the nftpol binary ($NFTPOL_BIN).
	Agent string
}

// AssetsFromEnv reads the asset locations the Makefile exports.
func AssetsFromEnv() Assets {
	return Assets{
		ControlPlane: os.Getenv("KUBEBUILDER_ASSETS"),
		Cluster:      os.Getenv("NFTPOL_CLUSTER_ASSETS"),
		Agent:        os.Getenv("NFTPOL_BIN"),
	}
}

// Missing returns what is missing to start a cluster, or "".
func (a Assets) Missing(withAgent bool) string {
	need := map[string][]string{
		a.ControlPlane: {"kube-apiserver", "etcd"},
		a.Cluster:      {"kube-controller-manager", "kube-scheduler", "kube-proxy", "kubectl", "agnhost", "ptp", "host-local", "loopback"},
	}
	if a.ControlPlane == "" {
		return "KUBEBUILDER_ASSETS is not set (make envtest-assets; make test and make cluster set it)"
	}
	if a.Cluster == "" {
		return "NFTPOL_CLUSTER_ASSETS is not set (make cluster-assets; make test and make cluster set it)"
	}
	for dir, bins := range need {
		for _, b := range bins {
			if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
				return fmt.Sprintf("%s lacks %s (make envtest-assets cluster-assets)", dir, b)
			}
		}
	}
	if withAgent {
		if _, err := os.Stat(a.Agent); err != nil {
			return "NFTPOL_BIN does not name the agent binary (make build)"
		}
	}
	for _, cmd := range []string{"ip", "nft"} {
		if _, err := lookPath(cmd); err != nil {
			return "needs the " + cmd + " command (Debian packages iproute2, nftables)"
		}
	}
	return ""
}

// Node is one node of the cluster.
type Node struct {
	Name string
	// Netns is the node's network namespace (a path under /run/netns).
	Netns string
	// IPs are the node's InternalIPs on the link between nodes, IPv4
	// then IPv6.
	IPs []netip.Addr
	// PodCIDRs are the node's pod ranges, IPv4 then IPv6.
	PodCIDRs []netip.Prefix

	netns string
	index int
}

// Cluster is a running cluster. Stop it with Stop.
type Cluster struct {
	// Kubeconfig is an admin kubeconfig for kubectl and clients; it works
	// in the root namespace and in every node's namespace.
	Kubeconfig string
	Config     *rest.Config
	Clientset  kubernetes.Interface
	// Dir holds the cluster's files; LogDir every component's log.
	Dir, LogDir string
	// Nodes are the cluster's nodes, in order.
	Nodes []*Node
	// Images is the image table the kubelets use.
	Images netnskubelet.Images

	opts     Options
	version  string
	log      logr.Logger
	env      *envtest.Environment
	lanNetns string
	cpNetns  string
	procs    []*process
	relays   []*relay
	cancel   context.CancelFunc
	kubelets sync.WaitGroup
	logFiles []io.Closer
	stopOnce sync.Once
}

// Start starts a cluster and waits until it is usable: every node Ready,
// every kube-proxy healthy, the default ServiceAccount created. On error
// everything started is stopped again.
func Start(ctx context.Context, opts Options) (c *Cluster, err error) {
	if opts.Prefix == "" {
		opts.Prefix = "nftcl"
	}
	if opts.Nodes == 0 {
		opts.Nodes = 2
	}
	if opts.Nodes < 1 || opts.Nodes > 200 {
		return nil, fmt.Errorf("cluster: %d nodes: between 1 and 200", opts.Nodes)
	}
	if opts.Dir == "" {
		opts.Dir = filepath.Join(os.TempDir(), "nftpol-cluster-"+opts.Prefix)
	}
	if opts.ProxyMode == "" {
		opts.ProxyMode = "nftables"
	}
	if opts.Log.GetSink() == nil {
		opts.Log = logr.Discard()
	}
	if reason := opts.Assets.Missing(!opts.NoAgent); reason != "" {
		return nil, errors.New("cluster: " + reason)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("cluster: needs root to create network namespaces")
	}
	start := time.Now()
	c = &Cluster{opts: opts, log: opts.Log, Dir: opts.Dir, LogDir: filepath.Join(opts.Dir, "logs")}
	defer func() {
		if err != nil {
			c.Stop()
			c = nil
		}
	}()

	// What an earlier run of the same cluster left, if it crashed.
	killProcessesMentioning(opts.Dir + "/")
	removeNamespaces(opts.Prefix)
	if err := os.RemoveAll(opts.Dir); err != nil {
		return c, fmt.Errorf("removing the old cluster directory: %w", err)
	}
	if err := os.MkdirAll(c.LogDir, 0o755); err != nil {
		return c, fmt.Errorf("creating the cluster directory: %w", err)
	}
	// Stop may run from here on: it removes the namespaces whatever
	// happened.
	kctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel

	c.version, err = binaryVersion(filepath.Join(opts.Assets.Cluster, "kube-controller-manager"))
	if err != nil {
		return c, err
	}
	step := time.Now()
	pki, err := newKubeletPKI(opts.Dir)
	if err != nil {
		return c, err
	}
	if err := c.startControlPlane(pki); err != nil {
		return c, err
	}
	c.log.Info("control plane up", "apiserver", c.Config.Host, "took", time.Since(step).Round(time.Millisecond))

	step = time.Now()
	if err := c.createLAN(); err != nil {
		return c, err
	}
	if err := c.createControlPlaneNetns(); err != nil {
		return c, err
	}
	_, apiPort, _ := net.SplitHostPort(apiHostPort(c.Config))
	cpRelay, err := startRelay(filepath.Join(netnskubelet.NetnsDir, c.cpNetns), net.JoinHostPort("", apiPort), apiHostPort(c.Config), c.log.WithValues("relay", "control-plane"))
	if err != nil {
		return c, fmt.Errorf("control-plane relay: %w", err)
	}
	c.relays = append(c.relays, cpRelay)
	for i := 1; i <= opts.Nodes; i++ {
		n, err := c.createNode(i)
		if err != nil {
			return c, err
		}
		c.Nodes = append(c.Nodes, n)
		r, err := startRelay(n.Netns, apiHostPort(c.Config), apiHostPort(c.Config), c.log.WithValues("node", n.Name))
		if err != nil {
			return c, fmt.Errorf("node %s: API relay: %w", n.Name, err)
		}
		c.relays = append(c.relays, r)
	}
	c.log.Info("node namespaces up", "nodes", opts.Nodes, "took", time.Since(step).Round(time.Millisecond))

	step = time.Now()
	if err := c.startControllers(); err != nil {
		return c, err
	}
	c.Images = netnskubelet.DefaultImages(filepath.Join(opts.Assets.Cluster, "agnhost"), opts.Assets.Agent)
	for _, n := range c.Nodes {
		if err := c.startKubelet(kctx, n, pki); err != nil {
			return c, err
		}
	}
	for _, n := range c.Nodes {
		if err := c.startNodeDaemons(n); err != nil {
			return c, err
		}
	}
	if err := c.waitUsable(ctx); err != nil {
		return c, err
	}
	c.log.Info("cluster usable", "components", time.Since(step).Round(time.Millisecond), "total", time.Since(start).Round(time.Millisecond))
	if !opts.NoAgent {
		step = time.Now()
		if err := c.installAgent(ctx); err != nil {
			return c, err
		}
		c.log.Info("agent DaemonSet ready on every node", "took", time.Since(step).Round(time.Millisecond), "total", time.Since(start).Round(time.Millisecond))
	}
	return c, nil
}

var lookPath = exec.LookPath

// binaryVersion returns the Kubernetes version a binary was built as
// (build-assets.sh stamps it), which the kubelets then report: the
// version lives in the Makefile only.
func binaryVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	f := strings.Fields(string(out))
	if len(f) != 2 || !strings.HasPrefix(f[1], "v") {
		return "", fmt.Errorf("%s --version printed %q", bin, out)
	}
	return f[1], nil
}

func apiHostPort(cfg *rest.Config) string {
	u, err := url.Parse(cfg.Host)
	if err != nil {
		return cfg.Host
	}
	return u.Host
}

// startControlPlane starts kube-apiserver and etcd through envtest, with
// what a cluster needs on top of envtest's defaults: the ServiceAccount
// admission plugin back on, the kubelets' client certificate, kubelets
// reached at their InternalDNS address (their loopback endpoint, see
// netnskubelet.Config.ServeAddr), the control plane's address on the
// shared link advertised as the `kubernetes` Service's endpoint, and a
// serving certificate valid there and on that Service.
func (c *Cluster) startControlPlane(pki *kubeletPKI) error {
	logf, err := os.Create(filepath.Join(c.LogDir, "kube-apiserver.log"))
	if err != nil {
		return fmt.Errorf("creating the API server log: %w", err)
	}
	etcdLog, err := os.Create(filepath.Join(c.LogDir, "etcd.log"))
	if err != nil {
		return fmt.Errorf("creating the etcd log: %w", err)
	}
	c.logFiles = append(c.logFiles, logf, etcdLog)
	env := &envtest.Environment{BinaryAssetsDirectory: c.opts.Assets.ControlPlane, ControlPlaneStartTimeout: time.Minute}
	api := env.ControlPlane.GetAPIServer()
	api.CertDir = filepath.Join(c.Dir, "apiserver")
	if err := os.MkdirAll(api.CertDir, 0o700); err != nil {
		return fmt.Errorf("creating the API server directory: %w", err)
	}
	var certIPs []net.IP
	for _, a := range append([]netip.Addr{netip.MustParseAddr("127.0.0.1"), controlPlaneIPs[0].Addr(), controlPlaneIPs[1].Addr()}, kubernetesServiceIPs...) {
		certIPs = append(certIPs, a.AsSlice())
	}
	caPEM, err := writeAPIServerPKI(api.CertDir, certIPs,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"})
	if err != nil {
		return err
	}
	// envtest keeps the files it finds and would otherwise fill this in.
	api.SecureServing.CA = caPEM
	api.Out, api.Err = logf, logf
	api.Configure().
		Set("advertise-address", controlPlaneIPs[0].Addr().String()).
		Disable("disable-admission-plugins").
		Set("kubelet-preferred-address-types", "InternalDNS").
		Set("kubelet-client-certificate", pki.ClientCert).
		Set("kubelet-client-key", pki.ClientKey).
		Set("service-cluster-ip-range", serviceCIDRs)
	etcd := &envtest.Etcd{}
	env.ControlPlane.Etcd = etcd
	etcd.DataDir = filepath.Join(c.Dir, "etcd")
	etcd.Out, etcd.Err = etcdLog, etcdLog
	cfg, err := env.Start()
	if err != nil {
		return fmt.Errorf("starting kube-apiserver and etcd: %w", err)
	}
	c.env = env
	c.Config = cfg
	c.Clientset, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating a clientset: %w", err)
	}
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := os.WriteFile(c.Kubeconfig, env.KubeConfig, 0o600); err != nil {
		return fmt.Errorf("writing the kubeconfig: %w", err)
	}
	if err := os.WriteFile(filepath.Join(c.Dir, "ca.crt"), cfg.CAData, 0o644); err != nil {
		return fmt.Errorf("writing the API server CA: %w", err)
	}
	return nil
}

// startControllers starts kube-controller-manager and kube-scheduler in
// the root namespace (they only talk to the API server). Neither serves
// its own port, so nothing else listens in the root namespace.
func (c *Cluster) startControllers() error {
	bin := func(name string) string { return filepath.Join(c.opts.Assets.Cluster, name) }
	kcm, err := startProcess(c.LogDir, "kube-controller-manager", bin("kube-controller-manager"),
		"--kubeconfig="+c.Kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--controllers=*",
		"--use-service-account-credentials=false",
		"--service-account-private-key-file="+filepath.Join(c.Dir, "apiserver", "sa-signer.key"),
		"--root-ca-file="+filepath.Join(c.Dir, "ca.crt"),
		"--allocate-node-cidrs=false",
		"--cluster-cidr="+clusterCIDRs,
		"--service-cluster-ip-range="+serviceCIDRs,
		"--v=2")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, kcm)
	sched, err := startProcess(c.LogDir, "kube-scheduler", bin("kube-scheduler"),
		"--kubeconfig="+c.Kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--v=2")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, sched)
	return nil
}

// startKubelet runs a node's netnskubelet in this process, its log in
// kubelet-<node>.log, and waits until it has registered the node.
func (c *Cluster) startKubelet(ctx context.Context, n *Node, pki *kubeletPKI) error {
	const host = "127.0.0.1"
	tlsCfg, err := pki.servingTLS(n.Name, host)
	if err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(c.LogDir, "kubelet-"+n.Name+".log"))
	if err != nil {
		return fmt.Errorf("creating the kubelet log: %w", err)
	}
	c.logFiles = append(c.logFiles, logf)
	var mu sync.Mutex
	log := funcr.New(func(prefix, args string) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintln(logf, time.Now().Format(time.StampMilli), prefix, args)
	}, funcr.Options{Verbosity: 1})
	cfg := rest.CopyConfig(c.Config)
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("node %s: creating a clientset: %w", n.Name, err)
	}
	k, err := netnskubelet.New(netnskubelet.Config{
		NodeName:    n.Name,
		NodeNetns:   n.Netns,
		NodeIPs:     n.IPs,
		PodCIDRs:    n.PodCIDRs,
		ServeAddr:   net.JoinHostPort(host, "0"),
		TLS:         tlsCfg,
		Client:      client,
		CNIBinDir:   c.opts.Assets.Cluster,
		CNI:         c.opts.CNI,
		StateDir:    filepath.Join(c.Dir, "nodes", n.Name),
		NetnsPrefix: fmt.Sprintf("%s-p%d", c.opts.Prefix, n.index),
		Images:      c.Images,
		Version:     c.version,
		Log:         log,
	})
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	errc := make(chan error, 1)
	c.kubelets.Go(func() {
		if err := k.Run(ctx); err != nil {
			log.Error(err, "kubelet stopped")
			errc <- err
		}
	})
	select {
	case <-k.Ready():
		return nil
	case err := <-errc:
		return fmt.Errorf("node %s: kubelet: %w", n.Name, err)
	case <-time.After(time.Minute):
		return fmt.Errorf("node %s: kubelet not ready after a minute (log %s)", n.Name, logf.Name())
	}
}

// startNodeDaemons starts what runs on every node besides the kubelet and
// its pods: kube-proxy inside the node's namespace (through `ip netns
// exec`, which also gives it the namespace's own /sys). The agent is a
// pod (installAgent).
func (c *Cluster) startNodeDaemons(n *Node) error {
	proxy, err := startProcess(c.LogDir, "kube-proxy-"+n.Name,
		"ip", "netns", "exec", n.netns, filepath.Join(c.opts.Assets.Cluster, "kube-proxy"),
		"--kubeconfig="+c.Kubeconfig,
		"--hostname-override="+n.Name,
		"--proxy-mode="+c.opts.ProxyMode,
		"--cluster-cidr="+clusterCIDRs,
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		// Conntrack limits and timeouts are the host's, not the node's
		// to change.
		"--conntrack-max-per-core=0",
		"--conntrack-tcp-timeout-established=0",
		"--conntrack-tcp-timeout-close-wait=0",
		"--v=2")
	if err != nil {
		return err
	}
	c.procs = append(c.procs, proxy)
	return nil
}

// waitUsable waits (bounded) until every node is Ready, every kube-proxy
// answers its health check inside its node and has programmed the
// kubernetes Service there, and the controller-manager has created the
// default ServiceAccount.
func (c *Cluster) waitUsable(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var last string
	err := wait.PollUntilContextCancel(ctx, 250*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		for _, p := range c.procs {
			if gone, err := p.exited(); gone {
				return false, fmt.Errorf("%w\n%s", err, tail(p.logPath, 2000))
			}
		}
		for _, n := range c.Nodes {
			node, err := c.Clientset.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
			if err != nil {
				last = err.Error()
				return false, nil
			}
			if !nodeReady(node) {
				last = "node " + n.Name + " not Ready"
				return false, nil
			}
			if err := kubeProxyHealthy(ctx, n); err != nil {
				last = "kube-proxy on " + n.Name + ": " + err.Error()
				return false, nil
			}
			// In-cluster clients (the agent) start as soon as they are
			// installed: kube-proxy must have programmed the kubernetes
			// Service, which its health check does not wait for.
			conn, err := netnskubelet.DialIn(ctx, n.Netns, "tcp", net.JoinHostPort(kubernetesServiceIPs[0].String(), "443"), time.Second)
			if err != nil {
				last = "the kubernetes Service from " + n.Name + ": " + err.Error()
				return false, nil
			}
			conn.Close()
		}
		if _, err := c.Clientset.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{}); err != nil {
			last = "default ServiceAccount: " + err.Error()
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for the cluster: %w (last: %s)", err, last)
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

func kubeProxyHealthy(ctx context.Context, n *Node) error {
	client := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return netnskubelet.DialIn(ctx, n.Netns, network, addr, time.Second)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://127.0.0.1:10256/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthz: %s", resp.Status)
	}
	return nil
}

// Stop stops everything in reverse order of starting and removes the
// namespaces, also when Start failed halfway. The directory stays, with
// the logs, until the next start of the same cluster.
func (c *Cluster) Stop() {
	c.stopOnce.Do(func() {
		// Agents and kube-proxy first, so no rule changes under the
		// kubelets as they tear pods down.
		for i := len(c.procs) - 1; i >= 0; i-- {
			c.procs[i].stop(10 * time.Second)
		}
		if c.cancel != nil {
			c.cancel()
		}
		c.kubelets.Wait()
		for _, r := range c.relays {
			r.Close()
		}
		if c.env != nil {
			if err := c.env.Stop(); err != nil {
				c.log.Error(err, "stopping the control plane")
			}
		}
		removeNamespaces(c.opts.Prefix)
		for _, f := range c.logFiles {
			_ = f.Close()
		}
	})
}

// Logs returns the last bytes of every component's log, for a failure
// report.
func (c *Cluster) Logs(perFile int64) string {
	entries, _ := os.ReadDir(c.LogDir)
	var b strings.Builder
	for _, e := range entries {
		fmt.Fprintf(&b, "==== %s ====\n%s\n", e.Name(), tail(filepath.Join(c.LogDir, e.Name()), perFile))
	}
	return b.String()
}
