// Command nftpol is the node agent: it enforces Kubernetes NetworkPolicy on
// its node with one nftables table. See README.md.
//
//	nftpol [flags]                      run the agent
//	nftpol cleanup [--table-name] [--netns] [--wait]  remove the agent's table
//	nftpol dump [--table-name] [--netns]  print the table as the kernel holds it
//	nftpol explain --from NS/POD --to NS/POD|IP --port PORT[/PROTO]  why a connection passes or not
//	nftpol cni                          the chained CNI plugin (also when run as nftpol-cni)
//	nftpol cni-install|cni-uninstall [--bin-dir] [--conf-dir]  chain the plugin into the node's conflist, or take it out
//	nftpol explain --policy NS/NAME --node NODE [--table-name] [--netns]  which pieces of a policy the node's table holds
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2/textlogger"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftpol/nftpol/controllers"
	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/podstart"
)

// version is set at build time (-ldflags "-X main.version=..."; the
// Makefile and Dockerfile use `git describe`).
var version = "dev"

func main() {
	// The runtime runs the plugin by its type name, without arguments.
	if filepath.Base(os.Args[0]) == podstart.PluginType {
		runCNIPlugin()
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "nftpol: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "cleanup":
			return runCleanup(ctx, args[1:], stderr)
		case "explain":
			return runExplain(ctx, args[1:], stdout, stderr)
		case "dump":
			return runDump(args[1:], stdout, stderr)
		case "cni":
			runCNIPlugin()
			return nil
		case "cni-install":
			return runCNIInstall(args[1:], stdout, stderr, false)
		case "cni-uninstall":
			return runCNIInstall(args[1:], stdout, stderr, true)
		case "version":
			_, err := fmt.Fprintln(stdout, version)
			return err
		default:
			return fmt.Errorf("unknown command %q (commands: cleanup, cni, cni-install, cni-uninstall, dump, explain, version)", args[0])
		}
	}
	return runAgent(ctx, args, stderr)
}

// agentFlags are the agent's command line (ARCHITECTURE.md).
type agentFlags struct {
	kubeconfig     string
	nodeName       string
	netns          string
	tableName      string
	metricsAddr    string
	healthAddr     string
	denyAction     string
	verifyInterval time.Duration
	logDenied      bool
	cutFlows       bool
	profiling      bool
	logDeniedRate  uint
	logDeniedGroup uint
	lookupMin      uint
	cniSocket      string
	podAddrGuard   bool
	podCIDRs       []netip.Prefix
	wireFormat     string
	compression    bool
	logConfig      *textlogger.Config
}

func parseAgentFlags(args []string, stderr io.Writer) (*agentFlags, error) {
	f := &agentFlags{logConfig: textlogger.NewConfig(textlogger.Output(stderr))}
	fs := flag.NewFlagSet("nftpol", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "path to a kubeconfig; empty means in-cluster configuration (or $KUBECONFIG)")
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "name of the node whose pods this agent enforces (default $NODE_NAME)")
	fs.StringVar(&f.netns, "netns", "", "program the nftables of the network namespace at this path instead of our own")
	fs.StringVar(&f.tableName, "table-name", nft.DefaultTable, "name of the inet table the agent owns")
	fs.StringVar(&f.metricsAddr, "metrics-bind-address", ":9090", `address of the metrics endpoint; "0" disables it`)
	fs.StringVar(&f.healthAddr, "health-probe-bind-address", ":9091", `address of /healthz and /readyz; "0" disables it`)
	fs.StringVar(&f.denyAction, "deny-action", string(nft.DefaultDeny), "what happens to denied packets: drop or reject")
	fs.DurationVar(&f.verifyInterval, "verify-interval", 30*time.Second, "how often the table is read back and repaired if someone changed it; 0 disables")
	fs.BoolVar(&f.cutFlows, "cut-denied-flows", true, "after a commit, delete the conntrack entries of established connections the new rules deny, so a policy change cuts open connections too")
	fs.BoolVar(&f.profiling, "profiling", false, "serve Go's /debug/pprof/ on the metrics address")
	fs.BoolVar(&f.logDenied, "log-denied", false, "log one line per denied flow (rate-limited NFLOG from the deny paths)")
	fs.UintVar(&f.logDeniedRate, "log-denied-rate", nft.DefaultLogRate, "at most this many denied packets per second and isolation chain reach the log")
	fs.UintVar(&f.logDeniedGroup, "log-denied-group", nft.DefaultLogGroup, "NFLOG group of the denied-packet log")
	fs.UintVar(&f.lookupMin, "lookup-min-policies", nft.DefaultLookupMinPolicies, "a pod isolated by at least this many policies has its allowed peers and ports looked up in verdict maps instead of walking every policy chain (1: every pod)")
	fs.StringVar(&f.cniSocket, "cni-socket", "", "unix socket on which to answer the nftpol CNI plugin (e.g. "+podstart.DefaultSocket+"); empty: off")
	fs.BoolVar(&f.podAddrGuard, "pod-address-guard", true, "drop the traffic of an address of this node's pod CIDRs until the agent has committed the rules of the pod that holds it (no window at pod start); off without pod CIDRs")
	fs.Func("pod-cidrs", "comma-separated pod CIDRs of this node for the pod address guard (default: the Node's spec.podCIDRs; give them for an IPAM that does not use those)", func(v string) error {
		for _, s := range strings.Split(v, ",") {
			p, err := netip.ParsePrefix(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("pod CIDR %q: %w", s, err)
			}
			f.podCIDRs = append(f.podCIDRs, p.Masked())
		}
		return nil
	})
	fs.StringVar(&f.wireFormat, "api-wire-format", string(controllers.WireProtobuf), "encoding of the built-in objects the agent lists and watches: protobuf, or json (larger, slower; for comparison and debugging). ClusterNetworkPolicies are always JSON")
	fs.BoolVar(&f.compression, "api-compression", true, "ask the API server to gzip lists and watches: fewer bytes on the wire, more API server CPU per event and agent (see BENCHMARKS.md)")
	f.logConfig.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	if f.nodeName == "" {
		return nil, errors.New("--node-name (or NODE_NAME) is required")
	}
	if _, err := nft.ParseDenyAction(f.denyAction); err != nil {
		return nil, err
	}
	if f.logDeniedRate == 0 || f.logDeniedRate > 1_000_000 {
		return nil, errors.New("--log-denied-rate must be between 1 and 1000000")
	}
	if f.logDeniedGroup > 65535 {
		return nil, errors.New("--log-denied-group must be at most 65535")
	}
	if _, err := controllers.ParseWireFormat(f.wireFormat); err != nil {
		return nil, err
	}
	if f.verifyInterval < 0 {
		return nil, errors.New("--verify-interval must not be negative")
	}
	if len(f.podCIDRs) > 0 && !f.podAddrGuard {
		return nil, errors.New("--pod-cidrs is for the pod address guard, which --pod-address-guard=false turns off")
	}
	return f, nil
}

func runAgent(ctx context.Context, args []string, stderr io.Writer) error {
	f, err := parseAgentFlags(args, stderr)
	if err != nil {
		return err
	}
	if err := nft.CheckPrivileges(); err != nil {
		return err
	}
	// A kernel without nf_tables is one clear line at start, not a stream
	// of failed syncs behind a healthy-looking pod.
	if err := nft.CheckNFTables(f.netns); err != nil {
		return err
	}
	log := textlogger.NewLogger(f.logConfig)
	if limit, err := softMemoryLimit(os.Getenv); err != nil {
		return err
	} else if limit > 0 {
		debug.SetMemoryLimit(limit)
		log.Info("Go soft memory limit set from the container's memory limit", "bytes", limit, "percent", memoryLimitPercent)
	}
	// controller-runtime's own packages log through its global logger.
	ctrllog.SetLogger(log)
	cfg, err := restConfig(f.kubeconfig)
	if err != nil {
		return err
	}
	deny, _ := nft.ParseDenyAction(f.denyAction)
	enforcer, err := nft.NewEnforcer(nft.Config{
		Table:     f.tableName,
		NetNSPath: f.netns,
		Deny:      deny,
		LogDenied: f.logDenied,
		LogGroup:  uint16(f.logDeniedGroup),
		LogRate:   uint32(f.logDeniedRate),
		// Bounded by what fits an int on every platform we build for.
		LookupMinPolicies: int(min(f.lookupMin, 1<<31-1)),
	})
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	defer enforcer.Close()

	mgr, _, err := controllers.NewManager(cfg, controllers.Options{
		NodeName:               f.nodeName,
		MetricsBindAddress:     f.metricsAddr,
		Profiling:              f.profiling,
		HealthProbeBindAddress: f.healthAddr,
		VerifyInterval:         f.verifyInterval,
		Enforcer:               enforcer,
		Log:                    log,
		LogDenied:              f.logDenied,
		LogGroup:               uint16(f.logDeniedGroup),
		NetNSPath:              f.netns,
		CNISocket:              f.cniSocket,
		PodAddrGuard:           f.podAddrGuard,
		PodCIDRs:               f.podCIDRs,
		CutDeniedFlows:         f.cutFlows,
		WireFormat:             controllers.WireFormat(f.wireFormat),
		DisableCompression:     !f.compression,
		// One agent per table and network namespace: a second one (a
		// stuck old pod, a second install) waits for the first to exit.
		Lock: func() (io.Closer, error) { return nft.TryLockTable(f.netns, f.tableName) },
	})
	if err != nil {
		return err
	}
	log.Info("starting", "version", version, "node", f.nodeName, "table", f.tableName, "netns", f.netns, "denyAction", f.denyAction, "cutDeniedFlows", f.cutFlows)
	// On exit the committed table stays in the kernel: pods stay protected
	// while the agent restarts or is upgraded.
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("running the manager: %w", err)
	}
	return nil
}

// tableCommand is a table command's opened table.
type tableCommand struct {
	enforcer *nft.Enforcer
	table    string
	netns    string
}

// openTable parses the flags every table command shares, plus extra ones,
// checks the capability and opens the table's namespace.
func openTable(name string, args []string, stderr io.Writer, extra func(*flag.FlagSet)) (*tableCommand, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	table := fs.String("table-name", nft.DefaultTable, "name of the table")
	netns := fs.String("netns", "", "network namespace path (default: our own)")
	if extra != nil {
		extra(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := nft.CheckPrivileges(); err != nil {
		return nil, err
	}
	enforcer, err := nft.NewEnforcer(nft.Config{Table: *table, NetNSPath: *netns})
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	return &tableCommand{enforcer: enforcer, table: *table, netns: *netns}, nil
}

// cleanupLockRetry is how often `cleanup --wait` tries the table lock.
const cleanupLockRetry = time.Second

// runCleanup removes the agent's table, for uninstalling. It takes the
// table lock first: removing the table under a running agent would only
// open the node's pods until that agent's next verification put it back.
// Without --wait it refuses while an agent holds the lock; with --wait it
// waits for that agent to exit (the uninstall DaemonSet starts while the
// agent pods may still be terminating).
func runCleanup(ctx context.Context, args []string, stderr io.Writer) error {
	var wait bool
	tc, err := openTable("nftpol cleanup", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&wait, "wait", false, "wait for a running agent of this table to exit before removing it, and after removing it wait for SIGTERM (for a cleanup DaemonSet whose pods must stay up)")
	})
	if err != nil {
		return err
	}
	defer tc.enforcer.Close()
	lock, err := lockForCleanup(ctx, tc, wait, stderr)
	if err != nil {
		return err
	}
	err = tc.enforcer.DeleteTable()
	// Released at once: an agent installed again must not wait for the
	// cleanup pod to go.
	if cerr := lock.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("releasing the table lock: %w", cerr)
	}
	if err != nil {
		return fmt.Errorf("removing table inet %s: %w", tc.table, err)
	}
	fmt.Fprintf(stderr, "removed table inet %s\n", tc.table)
	if wait {
		<-ctx.Done()
	}
	return nil
}

// lockForCleanup takes the table lock, waiting for it with wait.
func lockForCleanup(ctx context.Context, tc *tableCommand, wait bool, stderr io.Writer) (*nft.TableLock, error) {
	lastReason := ""
	for {
		lock, err := nft.TryLockTable(tc.netns, tc.table)
		if err == nil {
			return lock, nil
		}
		var locked *nft.LockedError
		if !errors.As(err, &locked) {
			return nil, fmt.Errorf("taking the table lock: %w", err)
		}
		if !wait {
			return nil, fmt.Errorf("%w: not removing the table under a running agent (stop the agent first, or pass --wait to wait for it to exit)", err)
		}
		if reason := err.Error(); reason != lastReason {
			fmt.Fprintf(stderr, "%s; waiting for it to exit\n", reason)
			lastReason = reason
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: stopped while waiting", err)
		case <-time.After(cleanupLockRetry):
		}
	}
}

// runDump prints our table read back from the kernel, annotated with the
// policies its chains come from and the size of every set.
func runDump(args []string, stdout, stderr io.Writer) error {
	tc, err := openTable("nftpol dump", args, stderr, nil)
	if err != nil {
		return err
	}
	defer tc.enforcer.Close()
	rs, err := tc.enforcer.ReadTable()
	if err != nil {
		return fmt.Errorf("reading table inet %s: %w", tc.table, err)
	}
	_, err = io.WriteString(stdout, rs.String())
	return err
}

// memoryLimitPercent is the share of the container's memory limit that the
// Go runtime's soft limit (GOMEMLIMIT) gets. At 100 % the collector works
// hard only when the OOM killer is about to strike, and what the runtime
// does not count goes over the line: kernel memory charged to the
// container (socket buffers: the netlink sockets of large commits are
// raised to 64 MiB), the binary's pages, and the delay with which freed
// memory is returned to the OS. At 85 % the collector reclaims first.
const memoryLimitPercent = 85

// memoryLimitEnv carries the container's memory limit in bytes; the
// DaemonSet sets it from limits.memory through the downward API.
const memoryLimitEnv = "NFTPOL_MEMORY_LIMIT"

// softMemoryLimit returns the Go soft memory limit to set from
// $NFTPOL_MEMORY_LIMIT, or 0 to leave the runtime's: when GOMEMLIMIT is set
// (the runtime applied it already: an explicit choice wins) or no limit is
// given.
func softMemoryLimit(getenv func(string) string) (int64, error) {
	if getenv("GOMEMLIMIT") != "" {
		return 0, nil
	}
	v := strings.TrimSpace(getenv(memoryLimitEnv))
	if v == "" {
		return 0, nil
	}
	limit, err := strconv.ParseInt(v, 10, 64)
	if err != nil || limit <= 0 {
		return 0, fmt.Errorf("$%s must be the container's memory limit in bytes, got %q", memoryLimitEnv, v)
	}
	return limit / 100 * memoryLimitPercent, nil
}

// restConfig loads the kubeconfig at path, or else $KUBECONFIG, or else the
// in-cluster configuration.
func restConfig(path string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = path
	if path == "" && os.Getenv("KUBECONFIG") == "" {
		cfg, err := rest.InClusterConfig()
		if err == nil {
			return cfg, nil
		}
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, nil).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the API server configuration: %w", err)
	}
	return cfg, nil
}
