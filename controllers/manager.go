package controllers

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Options configure the agent's control loop.
type Options struct {
	NodeName           string
	MetricsBindAddress string // "0" disables
	// Profiling serves Go's /debug/pprof/ next to /metrics.
	Profiling              bool
	HealthProbeBindAddress string // "0" disables
	// VerifyInterval is how often the committed table is read back and
	// compared with what was committed (drift repair). 0 disables.
	VerifyInterval time.Duration
	Enforcer       Enforcer
	Log            logr.Logger
	// SkipNameValidation allows several managers in one process (tests);
	// controller-runtime otherwise refuses a second controller named
	// "nftpol" because of its metric names.
	SkipNameValidation bool
	// MetricsRegistry receives the agent's metrics; nil means
	// controller-runtime's registry, served on MetricsBindAddress.
	MetricsRegistry prometheus.Registerer
	// LogDenied starts the denied-packet log: it reads NFLOG group
	// LogGroup in the namespace NetNSPath ("" is our own).
	LogDenied bool
	LogGroup  uint16
	NetNSPath string
	// Lock takes the table lock; the agent touches neither the table nor
	// the NFLOG group before it holds it. Nil: no lock (tests that run
	// one agent per namespace anyway).
	Lock TableLocker
	// LockRetryInterval is how often a waiting agent tries the lock;
	// 0 is DefaultLockRetryInterval.
	LockRetryInterval time.Duration
	// FailuresUntilUnready and SyncStuckAfter are the health thresholds;
	// 0 means DefaultFailuresUntilUnready and DefaultSyncStuckAfter.
	FailuresUntilUnready int
	SyncStuckAfter       time.Duration
	// DiscoveryInterval is how often the agent looks for the
	// ClusterNetworkPolicy API; 0 is DefaultDiscoveryInterval.
	DiscoveryInterval time.Duration
	// CutDeniedFlows deletes, after a commit, the conntrack entries of
	// the established connections the committed rules deny (in
	// NetNSPath), so that a policy change cuts them too.
	CutDeniedFlows bool
	// StatusSpread bounds the delay, derived from the node name, before an
	// agent writes ClusterNetworkPolicy status (see clusterPolicyStatus);
	// 0 is DefaultStatusSpread, negative is none.
	StatusSpread time.Duration
	// CNISocket, when set, is the unix socket on which the agent answers
	// the nftpol CNI plugin (podstart.go).
	CNISocket string
	// PodAddrGuard drops the traffic of this node's pod CIDR addresses
	// that no local pod has yet, until the commit that installs the
	// pod's rules (podstart_guard.go). PodCIDRs are the ranges; none:
	// the Node's spec.podCIDRs.
	PodAddrGuard bool
	PodCIDRs     []netip.Prefix
	// WireFormat is how the API server encodes the built-in objects the
	// agent lists and watches; "" is WireProtobuf.
	WireFormat WireFormat
	// DisableCompression stops asking the API server to gzip responses.
	// It gzips the stream of a watch-list request (the informers' initial
	// list and every event after it), each event on its own, for every
	// watching agent: bytes saved, API server CPU spent per event and
	// agent (BENCHMARKS.md, "Wire, memory and the fleet").
	DisableCompression bool
}

// WireFormat is the encoding of the agent's API requests for built-in
// types (Pods, Namespaces, NetworkPolicies, Nodes, Events).
type WireFormat string

const (
	// WireProtobuf asks for protobuf wherever the API server has it: every
	// built-in type. ClusterNetworkPolicies stay JSON: the API server
	// serves custom resources in JSON (and CBOR) only.
	WireProtobuf WireFormat = "protobuf"
	// WireJSON asks for JSON for everything: larger and slower to encode
	// and decode; kept to measure the difference (BENCHMARKS.md) and for
	// debugging with a proxy that shows the bodies.
	WireJSON WireFormat = "json"
)

// ParseWireFormat reads a --api-wire-format value.
func ParseWireFormat(s string) (WireFormat, error) {
	switch f := WireFormat(s); f {
	case WireProtobuf, WireJSON:
		return f, nil
	}
	return "", fmt.Errorf("unknown API wire format %q (protobuf or json)", s)
}

// withWireFormat returns the configuration the agent's clients use.
// controller-runtime chooses per type when the configuration names no
// content type: protobuf for the types of client-go's scheme, JSON for
// the rest (custom resources). So protobuf is that choice, made sure of by
// clearing a content type the kubeconfig may carry; JSON is asked for
// explicitly, on every request.
func withWireFormat(cfg *rest.Config, f WireFormat) (*rest.Config, error) {
	if f == "" {
		f = WireProtobuf
	}
	if _, err := ParseWireFormat(string(f)); err != nil {
		return nil, err
	}
	cfg = rest.CopyConfig(cfg)
	switch f {
	case WireProtobuf:
		cfg.ContentType, cfg.AcceptContentTypes = "", ""
	case WireJSON:
		cfg.ContentType = runtime.ContentTypeJSON
		cfg.AcceptContentTypes = runtime.ContentTypeJSON
	}
	return cfg, nil
}

// DefaultStatusSpread spreads the status passes of the agents of a cluster.
const DefaultStatusSpread = 2 * time.Second

// NewScheme returns the scheme of the objects the agent reads.
func NewScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("building the scheme: %w", err)
	}
	// Known to the scheme whether or not the CRD is installed; the agent
	// watches them only while the API is served.
	if err := cnpv1beta1.Install(scheme); err != nil {
		return nil, fmt.Errorf("adding ClusterNetworkPolicy to the scheme: %w", err)
	}
	return scheme, nil
}

// healthShutdownTimeout bounds how long the probe server waits for open
// probe requests at exit.
const healthShutdownTimeout = 5 * time.Second

// NewManager wires the watches, the syncer, health and readiness into a
// controller-runtime manager. Start it with mgr.Start(ctx): with
// opts.Lock set, Start also takes the table lock (waiting for it while
// another agent holds it) and releases it after everything else stopped.
func NewManager(cfg *rest.Config, opts Options) (manager.Manager, *Syncer, error) {
	if opts.NodeName == "" {
		return nil, nil, fmt.Errorf("node name is required")
	}
	scheme, err := NewScheme()
	if err != nil {
		return nil, nil, err
	}
	if cfg, err = withWireFormat(cfg, opts.WireFormat); err != nil {
		return nil, nil, err
	}
	cfg.DisableCompression = opts.DisableCompression
	metricsOpts := metricsserver.Options{BindAddress: opts.MetricsBindAddress}
	if opts.Profiling {
		metricsOpts.ExtraHandlers = map[string]http.Handler{
			"/debug/pprof/":        http.HandlerFunc(pprof.Index),
			"/debug/pprof/cmdline": http.HandlerFunc(pprof.Cmdline),
			"/debug/pprof/profile": http.HandlerFunc(pprof.Profile),
			"/debug/pprof/symbol":  http.HandlerFunc(pprof.Symbol),
			"/debug/pprof/trace":   http.HandlerFunc(pprof.Trace),
		}
	}
	mgr, err := manager.New(cfg, manager.Options{
		Scheme:  scheme,
		Logger:  opts.Log,
		Metrics: metricsOpts,
		// Our own probe server (below) instead of controller-runtime's,
		// which withholds why a check fails.
		HealthProbeBindAddress: "0",
		// Built-in kinds mapped without discovery: the manager is built
		// and the probes serve while the API server is away.
		MapperProvider: newBuiltinMapper,
		Cache: cache.Options{
			ByObject: map[client.Object]cache.ByObject{
				&corev1.Pod{}:                 {Transform: newPodTrimmer().Transform},
				&corev1.Namespace{}:           {Transform: TrimMeta},
				&networkingv1.NetworkPolicy{}: {Transform: newPolicyTrimmer().Transform},
				// Started only while the ClusterNetworkPolicy CRD is served.
				&corev1.Node{}: {Transform: trimNode},
			},
			// ClusterNetworkPolicies cannot be listed in ByObject: the
			// manager would need their REST mapping, which is missing
			// without the CRD, to start at all.
			DefaultTransform: trimClusterPolicy,
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("creating the manager: %w", err)
	}

	// Events are written with a client of their own: the manager's client
	// reads through the cache, and a Get of an Event would start a watch
	// of every Event in the cluster.
	events, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, nil, fmt.Errorf("creating the Events client: %w", err)
	}
	problems := &ProblemReporter{
		Reader: mgr.GetCache(),
		Events: events,
		Log:    opts.Log.WithName("problems"),
	}
	if err := mgr.Add(manager.RunnableFunc(problems.Run)); err != nil {
		return nil, nil, fmt.Errorf("adding the Event writer: %w", err)
	}
	reg := opts.MetricsRegistry
	if reg == nil {
		reg = ctrlmetrics.Registry
	}
	m, err := newSyncMetrics(reg)
	if err != nil {
		return nil, nil, err
	}
	if source, ok := opts.Enforcer.(CounterSource); ok {
		if err := reg.Register(newPolicyCollector(source, opts.Log.WithName("metrics"))); err != nil {
			return nil, nil, fmt.Errorf("registering policy counters: %w", err)
		}
	}
	var guard *tableGuard
	if opts.Lock != nil {
		guard = newTableGuard(opts.Lock, opts.LockRetryInterval, opts.Log.WithName("lock"))
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the discovery client: %w", err)
	}
	cnpWatch := newClusterPolicyWatch(mgr.GetCache(), disc, opts.DiscoveryInterval, opts.Log.WithName("clusternetworkpolicy"))
	if err := mgr.Add(cnpWatch); err != nil {
		return nil, nil, fmt.Errorf("adding the ClusterNetworkPolicy discovery: %w", err)
	}
	spread := opts.StatusSpread
	if spread == 0 {
		spread = DefaultStatusSpread
	}
	status := &clusterPolicyStatus{watch: cnpWatch, reader: mgr.GetCache(), writer: events,
		delay: nodeDelay(opts.NodeName, spread), log: opts.Log.WithName("clusternetworkpolicy-status")}
	if err := mgr.Add(status); err != nil {
		return nil, nil, fmt.Errorf("adding the ClusterNetworkPolicy status writer: %w", err)
	}
	problems.ClusterPolicies = cnpWatch
	cached := newCacheState(mgr.GetCache())
	cached.clusterPolicies = cnpWatch
	if err := cached.watchPodEvents(context.Background()); err != nil {
		return nil, nil, err
	}
	syncer := &Syncer{
		metrics:        m,
		cached:         cached,
		health:         newSyncHealth(opts.FailuresUntilUnready, opts.SyncStuckAfter, nil),
		guard:          guard,
		NodeName:       opts.NodeName,
		Enforcer:       opts.Enforcer,
		Problems:       problems,
		VerifyInterval: opts.VerifyInterval,
		Log:            opts.Log.WithName("sync"),
		repair:         make(chan event.GenericEvent, 1),
		started:        time.Now(),
	}
	if err := mgr.Add(manager.RunnableFunc(syncer.verifyLoop)); err != nil {
		return nil, nil, fmt.Errorf("adding the table verification: %w", err)
	}
	syncer.trim = newMemoryTrim(opts.Log.WithName("memory"))
	if err := mgr.Add(manager.RunnableFunc(syncer.trim.run)); err != nil {
		return nil, nil, fmt.Errorf("adding the memory trim: %w", err)
	}

	if syncer.latency, err = newLatencyTracker(reg); err != nil {
		return nil, nil, err
	}
	cnpWatch.changed = syncer.latency.received
	if opts.PodAddrGuard {
		syncer.podCIDRs = &podCIDRSource{node: opts.NodeName, reader: mgr.GetAPIReader(), explicit: opts.PodCIDRs,
			log: opts.Log.WithName("podguard")}
	}
	if opts.CutDeniedFlows {
		syncer.flows = &FlowCutter{NetNSPath: opts.NetNSPath, Log: opts.Log.WithName("flows")}
		for _, c := range syncer.flows.Collectors() {
			if err := reg.Register(c); err != nil {
				return nil, nil, fmt.Errorf("registering flow cut metrics: %w", err)
			}
		}
	}

	if opts.LogDenied {
		syncer.keepLookup = true
		logger := &DeniedLogger{NetNSPath: opts.NetNSPath, Group: opts.LogGroup, Syncer: syncer, Log: opts.Log.WithName("denied")}
		if err := mgr.Add(manager.RunnableFunc(logger.Start)); err != nil {
			return nil, nil, fmt.Errorf("adding the denied-packet log: %w", err)
		}
	}

	toNodeSync := handler.EnqueueRequestsFromMapFunc(func(context.Context, client.Object) []reconcile.Request {
		return []reconcile.Request{syncKey}
	})
	if err := addPodStartServer(mgr, cached, opts.CNISocket, opts.Log.WithName("podstart")); err != nil {
		return nil, nil, err
	}
	changed := syncer.latency.enqueueChange
	err = builder.ControllerManagedBy(mgr).
		Named("nftpol").
		// Pods through the handler that hands them to the Builder: it asks
		// for the sync after it recorded the pod (see cacheState).
		WatchesRawSource(source.Channel(cached.podSync, changed(ChangePod))).
		// Namespaces and NetworkPolicies likewise, through their handlers
		// (see cacheState).
		WatchesRawSource(source.Channel(cached.namespaceSync, changed(ChangeNamespace))).
		WatchesRawSource(source.Channel(cached.policySync, changed(ChangeNetworkPolicy))).
		// The ClusterNetworkPolicy watch records its changes itself.
		WatchesRawSource(source.Channel(cnpWatch.sync, toNodeSync)).
		// A table someone changed is replaced in the sync verifyLoop asks for.
		WatchesRawSource(source.Channel(syncer.repair, toNodeSync)).
		WithOptions(controller.Options{
			// One key, one worker: syncs never run concurrently.
			MaxConcurrentReconciles: 1,
			SkipNameValidation:      &opts.SkipNameValidation,
		}).
		Complete(syncer)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the controller: %w", err)
	}
	if addr := opts.HealthProbeBindAddress; addr != "" && addr != "0" {
		// Bound now, so that a taken port fails here, not after start.
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("listening for health probes on %s: %w", addr, err)
		}
		shutdown := healthShutdownTimeout
		srv := &manager.Server{
			Name: "health probes",
			Server: &http.Server{
				Handler:           syncer.healthHandler(),
				ReadHeaderTimeout: 5 * time.Second,
			},
			Listener:        ln,
			ShutdownTimeout: &shutdown,
		}
		if err := mgr.Add(srv); err != nil {
			ln.Close()
			return nil, nil, fmt.Errorf("adding the health probe server: %w", err)
		}
	}
	return &agentManager{Manager: mgr, guard: guard}, syncer, nil
}

// healthHandler serves the agent's /healthz and /readyz.
func (s *Syncer) healthHandler() http.Handler {
	live := []check{{"sync-loop", s.health.live}}
	ready := []check{{"table-lock", s.guard.ready}, {"synced", s.health.ready}}
	return healthHandler(live, ready)
}

// agentManager is the manager with the table lock around its run.
type agentManager struct {
	manager.Manager
	guard *tableGuard
}

// Start runs the manager. The lock is tried at once, next to the manager's
// start, so the probe server answers while the agent waits for it, and it
// is released only after every runnable (the syncer above all) stopped.
func (m *agentManager) Start(ctx context.Context) error {
	if m.guard == nil {
		return m.Manager.Start(ctx)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	release := make(chan struct{})
	guardDone := make(chan struct{})
	go func() {
		defer close(guardDone)
		m.guard.run(ctx, release)
	}()
	err := m.Manager.Start(ctx)
	close(release)
	cancel()
	<-guardDone
	return err
}
