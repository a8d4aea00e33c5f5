package controllers

import (
	"context"
	"fmt"
	"hash/fnv"
	"reflect"
	"sort"
	"strings"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
)

// This file follows ClusterNetworkPolicies (policy.networking.k8s.io
// v1beta1) when their CRD is installed, and only then: the agent polls
// discovery (which every authenticated client may read, so no RBAC on
// CustomResourceDefinitions is needed), starts the informers of the
// policies and of the Nodes (for nodes peers) when the API is served, and
// stops them when it goes. Without the CRD the agent runs exactly as
// before.

// DefaultDiscoveryInterval is how often the agent looks for the
// ClusterNetworkPolicy API.
const DefaultDiscoveryInterval = 10 * time.Second

// clusterPolicyResource is the resource discovery lists.
const clusterPolicyResource = "clusternetworkpolicies"

// clusterPolicyWatch discovers the API and runs the informers.
type clusterPolicyWatch struct {
	cache     cache.Cache
	discovery discovery.DiscoveryInterface
	interval  time.Duration
	// sync asks the node's sync controller for a sync; status asks the
	// status writer for a pass. Both are buffered and sent to without
	// blocking: one pending request stands for any number.
	sync   chan event.GenericEvent
	status chan struct{}
	log    logr.Logger
	// changed, when set, records each change that asks for a sync, by
	// kind (the programming-latency metrics).
	changed func(kind string)

	// active is set while the informers run and the state includes the
	// policies.
	active atomic.Bool
	regs   []func()
}

func newClusterPolicyWatch(c cache.Cache, d discovery.DiscoveryInterface, interval time.Duration, log logr.Logger) *clusterPolicyWatch {
	if interval <= 0 {
		interval = DefaultDiscoveryInterval
	}
	return &clusterPolicyWatch{cache: c, discovery: d, interval: interval,
		sync: make(chan event.GenericEvent, 1), status: make(chan struct{}, 1), log: log}
}

// Active reports whether the ClusterNetworkPolicy informers run.
func (w *clusterPolicyWatch) Active() bool { return w != nil && w.active.Load() }

func (w *clusterPolicyWatch) requestSync(kind string) {
	if w.changed != nil {
		w.changed(kind)
	}
	select {
	case w.sync <- event.GenericEvent{Object: &cnpv1beta1.ClusterNetworkPolicy{}}:
	default:
	}
}

func (w *clusterPolicyWatch) requestStatus() {
	select {
	case w.status <- struct{}{}:
	default:
	}
}

// Start checks discovery now and every interval until ctx ends.
func (w *clusterPolicyWatch) Start(ctx context.Context) error {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		w.check(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// served reports whether the API server serves the ClusterNetworkPolicy
// resource.
func (w *clusterPolicyWatch) served() (bool, error) {
	list, err := w.discovery.ServerResourcesForGroupVersion(cnpv1beta1.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	for _, r := range list.APIResources {
		if r.Name == clusterPolicyResource {
			return true, nil
		}
	}
	return false, nil
}

func (w *clusterPolicyWatch) check(ctx context.Context) {
	served, err := w.served()
	if err != nil {
		// Keep what runs: a discovery error says nothing about the CRD.
		w.log.Error(err, "looking for the ClusterNetworkPolicy API")
		return
	}
	switch {
	case served && !w.active.Load():
		if err := w.startInformers(ctx); err != nil {
			w.log.Error(err, "starting the ClusterNetworkPolicy informers; trying again", "in", w.interval)
			w.stopInformers(ctx)
			return
		}
		w.active.Store(true)
		w.log.Info("ClusterNetworkPolicy API found; enforcing ClusterNetworkPolicies")
		w.requestSync(ChangeClusterPolicyAPI)
		w.requestStatus()
	case !served && w.active.Load():
		w.active.Store(false)
		w.stopInformers(ctx)
		w.log.Info("ClusterNetworkPolicy API gone; enforcing NetworkPolicies only")
		w.requestSync(ChangeClusterPolicyAPI)
	}
}

// startInformers starts the informers of the policies and the nodes and
// waits for their first list.
func (w *clusterPolicyWatch) startInformers(ctx context.Context) error {
	cnps, err := w.cache.GetInformer(ctx, &cnpv1beta1.ClusterNetworkPolicy{})
	if err != nil {
		return fmt.Errorf("ClusterNetworkPolicy informer: %w", err)
	}
	reg, err := cnps.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { w.requestSync(ChangeClusterPolicy); w.requestStatus() },
		UpdateFunc: func(o, n any) {
			oc, ok1 := o.(*cnpv1beta1.ClusterNetworkPolicy)
			nc, ok2 := n.(*cnpv1beta1.ClusterNetworkPolicy)
			if !ok1 || !ok2 || !reflect.DeepEqual(oc.Spec, nc.Spec) || selectors.ModeChanged(oc.Annotations, nc.Annotations) {
				w.requestSync(ChangeClusterPolicy)
				w.requestStatus()
				return
			}
			if !reflect.DeepEqual(oc.Status, nc.Status) || oc.Generation != nc.Generation {
				w.requestStatus() // someone changed our conditions
			}
		},
		DeleteFunc: func(any) { w.requestSync(ChangeClusterPolicy); w.requestStatus() },
	})
	if err != nil {
		return fmt.Errorf("ClusterNetworkPolicy handler: %w", err)
	}
	w.regs = append(w.regs, func() { _ = cnps.RemoveEventHandler(reg) })
	nodes, err := w.cache.GetInformer(ctx, &corev1.Node{})
	if err != nil {
		return fmt.Errorf("Node informer: %w", err)
	}
	nreg, err := nodes.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { w.requestSync(ChangeNode) },
		UpdateFunc: func(o, n any) {
			on, ok1 := o.(*corev1.Node)
			nn, ok2 := n.(*corev1.Node)
			// Heartbeats change neither labels nor addresses.
			if !ok1 || !ok2 || !reflect.DeepEqual(selectors.NodeFromObject(on), selectors.NodeFromObject(nn)) {
				w.requestSync(ChangeNode)
			}
		},
		DeleteFunc: func(any) { w.requestSync(ChangeNode) },
	})
	if err != nil {
		return fmt.Errorf("Node handler: %w", err)
	}
	w.regs = append(w.regs, func() { _ = nodes.RemoveEventHandler(nreg) })
	return nil
}

func (w *clusterPolicyWatch) stopInformers(ctx context.Context) {
	for _, r := range w.regs {
		r()
	}
	w.regs = nil
	for _, obj := range []client.Object{&cnpv1beta1.ClusterNetworkPolicy{}, &corev1.Node{}} {
		if err := w.cache.RemoveInformer(ctx, obj); err != nil {
			w.log.Error(err, "stopping an informer", "type", fmt.Sprintf("%T", obj))
		}
	}
}

// trimNode keeps of a Node what the model reads: name, labels, addresses.
func trimNode(obj any) (any, error) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return obj, nil
	}
	return &corev1.Node{
		TypeMeta: n.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, UID: n.UID, ResourceVersion: n.ResourceVersion,
			Labels: n.Labels, CreationTimestamp: n.CreationTimestamp, DeletionTimestamp: n.DeletionTimestamp},
		Status: corev1.NodeStatus{Addresses: n.Status.Addresses},
	}, nil
}

// trimClusterPolicy drops what the agent never reads of a policy.
func trimClusterPolicy(obj any) (any, error) {
	if c, ok := obj.(*cnpv1beta1.ClusterNetworkPolicy); ok {
		c.ManagedFields = nil
		c.Annotations = selectors.ModeAnnotations(c.Annotations) // audit mode
	}
	return obj, nil
}

// Condition types the agent sets on every ClusterNetworkPolicy. They are a
// function of the policies' specs only, never of one node's pods, so every
// agent computes the same conditions and writes only when the object's
// differ: agents on many nodes never undo each other's writes.
const (
	// ConditionAccepted is False when nothing of the policy can be
	// enforced (an invalid tier, priority or subject).
	ConditionAccepted = "Accepted"
	// ConditionPartiallyEnforced is True when parts of the policy match
	// nothing (domainNames, invalid selectors, ports or CIDRs); the
	// message lists them.
	ConditionPartiallyEnforced = "PartiallyEnforced"
	// ConditionPriorityTie is True when other policies of the same tier
	// have the same priority; the message names them and the order the
	// agent uses (by name).
	ConditionPriorityTie = "PriorityTie"
)

// maxConditionMessage is the API's limit on a condition message.
const maxConditionMessage = 32768

// ClusterPolicyConditions returns the conditions of cnp among all the
// cluster's policies.
func ClusterPolicyConditions(cnp *cnpv1beta1.ClusterNetworkPolicy, all []*cnpv1beta1.ClusterNetworkPolicy) []metav1.Condition {
	problems := selectors.ParseClusterPolicyProblems(cnp)
	gen := cnp.Generation
	accepted := metav1.Condition{Type: ConditionAccepted, Status: metav1.ConditionTrue, Reason: "Enforced",
		Message: "enforced by nftpol on the nodes of its subject pods", ObservedGeneration: gen}
	if strings.Contains(strings.Join(problems, "\n"), "the policy selects no pod") {
		accepted.Status, accepted.Reason, accepted.Message = metav1.ConditionFalse, "Invalid", truncateMessage(strings.Join(problems, "; "))
	}
	partial := metav1.Condition{Type: ConditionPartiallyEnforced, Status: metav1.ConditionFalse, Reason: "FullyEnforced",
		Message: "every rule is enforced as written", ObservedGeneration: gen}
	if len(problems) > 0 && accepted.Status == metav1.ConditionTrue {
		partial.Status, partial.Reason, partial.Message = metav1.ConditionTrue, "UnsupportedOrInvalidParts", truncateMessage(strings.Join(problems, "; "))
	}
	var ties []string
	for _, o := range all {
		if o != nil && o.Name != cnp.Name && o.Spec.Tier == cnp.Spec.Tier && o.Spec.Priority == cnp.Spec.Priority {
			ties = append(ties, o.Name)
		}
	}
	sort.Strings(ties)
	tie := metav1.Condition{Type: ConditionPriorityTie, Status: metav1.ConditionFalse, Reason: "UniquePriority",
		Message: fmt.Sprintf("no other %s policy has priority %d", cnp.Spec.Tier, cnp.Spec.Priority), ObservedGeneration: gen}
	if len(ties) > 0 {
		tie.Status, tie.Reason = metav1.ConditionTrue, "SamePriority"
		tie.Message = truncateMessage(fmt.Sprintf("priority %d is shared in tier %s with %s; nftpol evaluates equal priorities by name, ascending",
			cnp.Spec.Priority, cnp.Spec.Tier, strings.Join(ties, ", ")))
	}
	return []metav1.Condition{accepted, partial, tie}
}

func truncateMessage(s string) string {
	if len(s) > maxConditionMessage {
		return s[:maxConditionMessage]
	}
	return s
}

// conditionsDiffer reports whether want differs from what the object
// holds, ignoring transition times.
func conditionsDiffer(have []metav1.Condition, want []metav1.Condition) bool {
	for _, w := range want {
		h := meta.FindStatusCondition(have, w.Type)
		if h == nil || h.Status != w.Status || h.Reason != w.Reason || h.Message != w.Message || h.ObservedGeneration != w.ObservedGeneration {
			return true
		}
	}
	return false
}

// clusterPolicyStatus writes the conditions of every ClusterNetworkPolicy
// whose conditions differ from what the agent computes. Every agent runs
// it; since the conditions are the same everywhere, the first write wins
// and the others find nothing to do (a write that loses the race is a
// conflict, and the next pass reads the winner's status). A delay derived
// from the node name spreads the agents' passes so that most find the
// work done.
type clusterPolicyStatus struct {
	watch  *clusterPolicyWatch
	reader client.Reader
	writer client.StatusClient
	delay  time.Duration
	log    logr.Logger
}

func nodeDelay(node string, max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	h := fnv.New32a()
	h.Write([]byte(node))
	return time.Duration(h.Sum32()) % max
}

// Start writes statuses whenever the watch asks, until ctx ends.
func (s *clusterPolicyStatus) Start(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.watch.status:
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(s.delay):
		}
		if !s.watch.Active() {
			continue
		}
		if err := s.pass(ctx); err != nil {
			s.log.Error(err, "writing ClusterNetworkPolicy status; trying again")
			go func() {
				select {
				case <-ctx.Done():
				case <-time.After(time.Second):
					s.watch.requestStatus()
				}
			}()
		}
	}
}

// pass writes the status of every policy whose conditions differ.
func (s *clusterPolicyStatus) pass(ctx context.Context) error {
	var list cnpv1beta1.ClusterNetworkPolicyList
	if err := s.reader.List(ctx, &list); err != nil {
		return fmt.Errorf("listing ClusterNetworkPolicies: %w", err)
	}
	all := make([]*cnpv1beta1.ClusterNetworkPolicy, len(list.Items))
	for i := range list.Items {
		all[i] = &list.Items[i]
	}
	var errs []string
	for _, cnp := range all {
		want := ClusterPolicyConditions(cnp, all)
		if !conditionsDiffer(cnp.Status.Conditions, want) {
			continue
		}
		updated := cnp.DeepCopy()
		for _, c := range want {
			meta.SetStatusCondition(&updated.Status.Conditions, c)
		}
		err := s.writer.Status().Update(ctx, updated)
		switch {
		case err == nil:
			s.log.V(1).Info("status written", "clusterNetworkPolicy", cnp.Name)
		case apierrors.IsNotFound(err):
		case apierrors.IsConflict(err):
			// Another agent wrote, or the policy changed: its event
			// brings another pass.
		default:
			errs = append(errs, fmt.Sprintf("%s: %v", cnp.Name, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("updating the status of %s", strings.Join(errs, "; "))
	}
	return nil
}
