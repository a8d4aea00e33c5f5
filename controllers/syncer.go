package controllers

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
)

// syncKey is the one work item of the node. Every watched event enqueues it,
// and a workqueue holds a key at most once, so a burst of events becomes one
// sync, and an event during a sync becomes exactly one more.
var syncKey = reconcile.Request{NamespacedName: types.NamespacedName{Name: "node-sync"}}

// Enforcer is what the syncer needs of nft.Enforcer: the kernel handle
// that commits rulesets. The syncer compiles them for its configuration.
type Enforcer interface {
	Config() nft.Config
	Commit(rs *nft.Ruleset) (nft.CommitStats, error)
	Verify() error
	Invalidate()
}

// Syncer turns the cached cluster state into this node's model and commits
// it. It is the only reconciler of the agent.
type Syncer struct {
	NodeName       string
	Enforcer       Enforcer
	Problems       *ProblemReporter
	VerifyInterval time.Duration
	Log            logr.Logger

	metrics *syncMetrics
	// cached reads the agent's informers.
	cached *cacheState
	// health is what the probes know of the sync loop; never nil after
	// NewManager.
	health *syncHealth
	// guard, when set, holds back the first sync until this agent holds
	// the table lock.
	guard *tableGuard
	// compiler reuses the compiled sets whose content did not change;
	// created on first use. The Builder is cached's.
	compiler *nft.Compiler
	// lookup names pods for the denied-packet log; replaced after every
	// successful sync.
	lookup atomic.Pointer[podLookup]
	// keepLookup is set when the denied-packet log is on.
	keepLookup bool
	// latency measures how long changes take to be committed; nil
	// measures nothing.
	latency *latencyTracker
	// podCIDRs, when set, turns on the guard of pod addresses
	// (podstart_guard.go).
	podCIDRs *podCIDRSource
	// flows, when set, deletes after a commit the conntrack entries of
	// the connections the committed rules deny.
	flows *FlowCutter

	// repair asks for a sync after verifyLoop found the table changed
	// behind our back.
	repair chan event.GenericEvent

	// started is when the agent was made, for the log of its first
	// commit.
	started time.Time
	// trim returns the free heap to the system after large commits;
	// nil does nothing.
	trim *memoryTrim

	// mu serializes syncs (controller-runtime runs one at a time already;
	// this keeps it true for direct calls). The probes never take it.
	mu sync.Mutex
}

// Reconcile runs one sync of the node. Errors make controller-runtime retry
// with backoff; the kernel keeps the last committed table meanwhile.
func (s *Syncer) Reconcile(ctx context.Context, _ reconcile.Request) (_ reconcile.Result, err error) {
	// Another agent may program this table: touch nothing until it is
	// ours. The wait is not a sync, so it does not count for liveness.
	if !s.guard.wait(ctx) {
		return reconcile.Result{}, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.health.begin()
	defer func() { s.recordOutcome(err) }()
	log := s.Log

	// Every change received until now is in the cache this sync reads.
	s.latency.take()
	start := time.Now()
	first := !s.health.synced()
	state, err := s.cached.Read(ctx)
	if err != nil {
		s.metrics.observe(start, 0, nil, nft.CommitStats{}, err)
		return reconcile.Result{}, err
	}
	if s.compiler == nil {
		if s.compiler, err = nft.NewCompiler(s.Enforcer.Config()); err != nil {
			return reconcile.Result{}, err
		}
	}
	model, problems := s.cached.builder.BuildFromEvents(s.NodeName, state)
	model.Guard = s.podAddrGuard(ctx)
	desired := s.compiler.Compile(model)
	compute := time.Since(start)
	s.Problems.Report(ctx, problems)

	stats, err := s.Enforcer.Commit(desired)
	s.metrics.observe(start, s.cached.builder.LocalEndpoints(), model, stats, err)
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("committing the ruleset: %w", err)
	}
	s.cached.podStart.committed()
	s.latency.committed()
	if s.flows != nil && mayDenyMore(stats) {
		s.flows.Sweep(model, s.reportFlowCut)
	}
	if s.keepLookup {
		s.lookup.Store(newPodLookup(s.cached.ownerName, model))
	}
	if first {
		s.firstCommitted(start, compute, model, stats)
	}
	s.trim.committed(stats, first)
	log.V(1).Info("synced", "pods", len(model.Pods), "policies", len(model.Policies), "clusterPolicies", len(model.ClusterPolicies),
		"compute", compute, "stats", stats)
	// A sync at least every VerifyInterval, changes or not: answers read in
	// the background (the Node's pod CIDRs) are taken up by the next sync.
	// The read-back itself runs in verifyLoop.
	return reconcile.Result{RequeueAfter: s.VerifyInterval}, nil
}

// firstCommitted logs where the agent's start went, once, after its first
// commit: waiting for the informers' initial lists (the first sync starts
// when they are complete), computing the table and committing it.
func (s *Syncer) firstCommitted(syncStart time.Time, compute time.Duration, model *selectors.Model, stats nft.CommitStats) {
	s.Log.Info("first table committed", "sinceStart", time.Since(s.started).Round(time.Millisecond),
		"initialLists", syncStart.Sub(s.started).Round(time.Millisecond),
		"compute", compute.Round(time.Millisecond), "commit", stats.Duration.Round(time.Millisecond),
		"pods", len(model.Pods), "policies", len(model.Policies), "elements", stats.Elements)
}

// verifyLoop reads the table back every VerifyInterval once a sync has
// succeeded, and compares it with what was committed. It runs beside the
// sync loop, not in it: reading a table of 100k elements takes seconds,
// which a change must not wait for (nft.Enforcer.Verify concludes
// nothing from a read a commit overlapped). When someone changed the
// table, the next commit replaces it whole, and that sync is asked for
// now.
func (s *Syncer) verifyLoop(ctx context.Context) error {
	if s.VerifyInterval <= 0 {
		return nil
	}
	tick := time.NewTicker(s.VerifyInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if !s.Synced() {
			continue
		}
		if err := s.Enforcer.Verify(); err != nil {
			s.Log.Info("table differs from what was committed; replacing it", "reason", err.Error())
			s.Enforcer.Invalidate()
			select {
			case s.repair <- event.GenericEvent{Object: &corev1.Node{}}:
			default: // a repair sync is asked for already
			}
		}
	}
}

// reportFlowCut logs and counts one sweep of the conntrack table, which
// deleted the entries the committed model denies (FlowCutter.Sweep). A
// failure is logged, never fails a sync: the rules are committed, and the
// next sweep (after the next change) tries again.
func (s *Syncer) reportFlowCut(st FlowCutStats, err error) {
	s.metrics.flowsCut(st)
	if err != nil {
		s.Log.Error(err, "cutting established flows the new rules deny", "cut", st.Cut)
		return
	}
	s.Log.Info("cut established flows the new rules deny", "cut", st.Cut, "considered", st.Considered,
		"entries", st.Entries, "gone", st.Gone, "superseded", st.Superseded, "duration", st.Duration)
}

// recordOutcome tells the probes and the metrics how a sync ended.
func (s *Syncer) recordOutcome(err error) {
	failures := s.health.end(err)
	s.metrics.consecutiveFailures(failures)
	if err != nil && failures == s.health.failuresUntilUnready {
		s.Log.Error(err, "syncs keep failing; readiness now reports it", "failuresInARow", failures)
	}
}

// Synced reports whether one sync has been committed.
func (s *Syncer) Synced() bool {
	return s.health.synced()
}

// ReadyCheck is a healthz.Checker: it passes once this agent holds the
// table lock and has committed a sync, and fails while the last syncs
// failed in a row (see syncHealth.ready). It never waits for a sync.
func (s *Syncer) ReadyCheck(_ *http.Request) error {
	if err := s.guard.ready(); err != nil {
		return err
	}
	return s.health.ready()
}

// LiveCheck is a healthz.Checker that fails only when the sync loop is
// wedged (see syncHealth.live). It never waits for a sync.
func (s *Syncer) LiveCheck(_ *http.Request) error {
	return s.health.live()
}

// ReadState reads the cluster as the policy model takes it. The agent
// reads its cache; `nftpol explain`, the demo and the tests read the API
// server with a plain client, through this same function.
func ReadState(ctx context.Context, r client.Reader) (*selectors.State, error) {
	var pods corev1.PodList
	// The cache's objects are only read here, never changed, so the deep
	// copy a cache List makes by default would be pure waste at 100k pods.
	// (A live client ignores the option.)
	noCopy := client.UnsafeDisableDeepCopy
	if err := r.List(ctx, &pods, noCopy); err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	var namespaces corev1.NamespaceList
	if err := r.List(ctx, &namespaces, noCopy); err != nil {
		return nil, fmt.Errorf("listing namespaces: %w", err)
	}
	var policies networkingv1.NetworkPolicyList
	if err := r.List(ctx, &policies, noCopy); err != nil {
		return nil, fmt.Errorf("listing network policies: %w", err)
	}
	state := &selectors.State{
		Pods:       make([]*selectors.Pod, 0, len(pods.Items)),
		Namespaces: make([]*selectors.Namespace, 0, len(namespaces.Items)),
		Policies:   make([]*networkingv1.NetworkPolicy, 0, len(policies.Items)),
	}
	for i := range pods.Items {
		state.Pods = append(state.Pods, selectors.PodFromObject(&pods.Items[i]))
	}
	for i := range namespaces.Items {
		state.Namespaces = append(state.Namespaces, selectors.NamespaceFromObject(&namespaces.Items[i]))
	}
	for i := range policies.Items {
		state.Policies = append(state.Policies, &policies.Items[i])
	}
	// ClusterNetworkPolicies when their CRD is installed, and then the
	// Nodes their nodes peers select.
	var cnps cnpv1beta1.ClusterNetworkPolicyList
	switch err := r.List(ctx, &cnps, noCopy); {
	case meta.IsNoMatchError(err) || apierrors.IsNotFound(err):
		return state, nil
	case err != nil:
		return nil, fmt.Errorf("listing cluster network policies: %w", err)
	}
	state.ClusterPolicies = make([]*cnpv1beta1.ClusterNetworkPolicy, 0, len(cnps.Items))
	for i := range cnps.Items {
		state.ClusterPolicies = append(state.ClusterPolicies, &cnps.Items[i])
	}
	var nodes corev1.NodeList
	if err := r.List(ctx, &nodes, noCopy); err != nil {
		return nil, fmt.Errorf("listing nodes: %w", err)
	}
	for i := range nodes.Items {
		state.Nodes = append(state.Nodes, selectors.NodeFromObject(&nodes.Items[i]))
	}
	return state, nil
}

// NewReader returns a live (uncached) reader of the API server for the
// objects the model reads.
func NewReader(cfg *rest.Config) (client.Reader, error) {
	scheme, err := NewScheme()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("creating an API client: %w", err)
	}
	return c, nil
}
