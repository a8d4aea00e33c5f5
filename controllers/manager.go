package controllers

import (
	"context"
	"fmt"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
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
}

// NewScheme returns the scheme of the objects the agent reads.
func NewScheme() (*runtime.Scheme, error) {
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		return nil, fmt.Errorf("building the scheme: %w", err)
	}
	return scheme, nil
}

// NewManager wires the watches, the syncer, health and readiness into a
// controller-runtime manager. Start it with mgr.Start(ctx).
func NewManager(cfg *rest.Config, opts Options) (manager.Manager, *Syncer, error) {
	if opts.NodeName == "" {
		return nil, nil, fmt.Errorf("node name is required")
	}
	scheme, err := NewScheme()
	if err != nil {
		return nil, nil, err
	}
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
		Scheme:                 scheme,
		Logger:                 opts.Log,
		Metrics:                metricsOpts,
		HealthProbeBindAddress: opts.HealthProbeBindAddress,
		Cache: cache.Options{
			ByObject: map[client.Object]cache.ByObject{
				&corev1.Pod{}:                 {Transform: newPodTrimmer().Transform},
				&corev1.Namespace{}:           {Transform: TrimMeta},
				&networkingv1.NetworkPolicy{}: {Transform: TrimMeta},
			},
		},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("creating the manager: %w", err)
	}

	problems := &ProblemReporter{
		Reader:   mgr.GetCache(),
		Recorder: mgr.GetEventRecorder("nftpol"),
		NodeName: opts.NodeName,
		Log:      opts.Log.WithName("problems"),
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
	syncer := &Syncer{
		metrics:        m,
		Reader:         mgr.GetCache(),
		cached:         newCacheState(mgr.GetCache()),
		NodeName:       opts.NodeName,
		Enforcer:       opts.Enforcer,
		Problems:       problems,
		VerifyInterval: opts.VerifyInterval,
		Log:            opts.Log.WithName("sync"),
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
	err = builder.ControllerManagedBy(mgr).
		Named("nftpol").
		Watches(&corev1.Pod{}, toNodeSync, builder.WithPredicates(modelInputChanged())).
		Watches(&corev1.Namespace{}, toNodeSync, builder.WithPredicates(modelInputChanged())).
		Watches(&networkingv1.NetworkPolicy{}, toNodeSync, builder.WithPredicates(modelInputChanged())).
		WithOptions(controller.Options{
			// One key, one worker: syncs never run concurrently.
			MaxConcurrentReconciles: 1,
			SkipNameValidation:      &opts.SkipNameValidation,
		}).
		Complete(syncer)
	if err != nil {
		return nil, nil, fmt.Errorf("creating the controller: %w", err)
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return nil, nil, fmt.Errorf("adding the health check: %w", err)
	}
	if err := mgr.AddReadyzCheck("synced", syncer.ReadyCheck); err != nil {
		return nil, nil, fmt.Errorf("adding the readiness check: %w", err)
	}
	return mgr, syncer, nil
}
