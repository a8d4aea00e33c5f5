package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
)

// EventReason is the reason of the Events about policy parts that cannot be
// enforced.
const EventReason = "PartlyUnenforceable"

const (
	// eventController and eventInstance fill the Event's reporting
	// fields. The instance is not the node: one Event stands for every
	// node that sees the problem (the problem is the policy's, not the
	// node's).
	eventController = "nftpol"
	eventInstance   = "nftpol"
	eventAction     = "Enforce"
	// seriesRefresh is how old the last observation of an existing Event
	// must be before an agent that sees its problem anew counts it in the
	// Event's series. Agents see a problem at start and whenever it comes
	// back; on a 1,000-node cluster a restart of every agent would
	// otherwise mean 1,000 writes for one problem. Within the refresh
	// interval an Event that exists is left alone.
	seriesRefresh = 10 * time.Minute
	// eventWriteTimeout bounds one write to the API server, so that an
	// API server that is away delays the next Event, never a sync.
	eventWriteTimeout = 10 * time.Second
	// eventQueue bounds the Events waiting to be written; a problem that
	// finds the queue full is tried again at the next sync.
	eventQueue = 256
	// maxNote is the API's limit on an Event's note.
	maxNote = 1024
)

// ProblemReporter tells people about the parts of policies the agent
// cannot enforce: one log line per policy and reason for as long as the
// problem lasts on this node, and one Kubernetes Event per policy and
// reason for the whole cluster. The Event's name is derived from the
// policy's UID and the problem, so every agent that sees the problem
// writes the same object: the first creates it, the others find it exists.
// A problem that goes away and comes back is logged again and, at most
// once per seriesRefresh, counted in the Event's series.
//
// Report never waits for the API server: Events are written by Run, from a
// bounded queue.
type ProblemReporter struct {
	// Reader reads the policies (the agent's cache).
	Reader client.Reader
	// Events writes Events (create, get, update); it must not be a
	// cached client, which would watch every Event of the cluster. Nil:
	// log only.
	Events client.Client
	Log    logr.Logger
	// Now is the clock; nil is time.Now.
	Now func() time.Time
	// ClusterPolicies, when active, lets Events name ClusterNetworkPolicies
	// (their reader exists only while the CRD is served).
	ClusterPolicies *clusterPolicyWatch

	mu sync.Mutex
	// reported holds the problems of the last sync, logged.
	reported map[selectors.Problem]bool
	// evented holds the problems whose Event was written (or found) since
	// they appeared; queued those waiting in queue.
	evented map[selectors.Problem]bool
	queued  map[selectors.Problem]bool
	queue   chan selectors.Problem
}

func (r *ProblemReporter) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *ProblemReporter) init() {
	if r.queue == nil {
		r.queue = make(chan selectors.Problem, eventQueue)
		r.evented = map[selectors.Problem]bool{}
		r.queued = map[selectors.Problem]bool{}
	}
}

// Report records the problems of one sync.
func (r *ProblemReporter) Report(_ context.Context, problems []selectors.Problem) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.init()
	current := make(map[selectors.Problem]bool, len(problems))
	for _, p := range problems {
		current[p] = true
		if !r.reported[p] {
			kind := "NetworkPolicy"
			if p.Cluster {
				kind = "ClusterNetworkPolicy"
			}
			r.Log.Info("policy cannot be fully enforced; the affected part matches nothing", "kind", kind, "policy", p.Policy, "reason", p.Reason)
		}
		if r.Events == nil || r.evented[p] || r.queued[p] {
			continue
		}
		select {
		case r.queue <- p:
			r.queued[p] = true
		default:
			// Full: this problem is tried again at the next sync.
		}
	}
	for p := range r.evented {
		if !current[p] {
			delete(r.evented, p)
		}
	}
	r.reported = current
}

// Run writes the queued Events until ctx ends. A failed write is retried at
// a later sync that still sees the problem.
func (r *ProblemReporter) Run(ctx context.Context) error {
	r.mu.Lock()
	r.init()
	queue := r.queue
	r.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return nil
		case p := <-queue:
			wctx, cancel := context.WithTimeout(ctx, eventWriteTimeout)
			err := r.writeEvent(wctx, p)
			cancel()
			r.mu.Lock()
			delete(r.queued, p)
			if err == nil && r.reported[p] {
				r.evented[p] = true
			}
			r.mu.Unlock()
			if err != nil && ctx.Err() == nil {
				r.Log.Error(err, "writing the Event about a policy; retrying at a later sync", "policy", p.Policy)
			}
		}
	}
}

// writeEvent creates the Event of p, or counts it in the series of the
// Event another agent created.
func (r *ProblemReporter) writeEvent(ctx context.Context, p selectors.Problem) error {
	now := r.now()
	var ev *eventsv1.Event
	if p.Cluster {
		if !r.ClusterPolicies.Active() {
			return nil
		}
		var policy cnpv1beta1.ClusterNetworkPolicy
		if err := r.Reader.Get(ctx, types.NamespacedName{Name: p.Policy}, &policy); err != nil {
			return client.IgnoreNotFound(err)
		}
		ev = problemEvent(corev1.ObjectReference{APIVersion: cnpv1beta1.GroupVersion.String(), Kind: "ClusterNetworkPolicy",
			Name: policy.Name, UID: policy.UID}, p.Reason, now)
	} else {
		ns, name, ok := strings.Cut(p.Policy, "/")
		if !ok {
			return nil
		}
		var policy networkingv1.NetworkPolicy
		if err := r.Reader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &policy); err != nil {
			// Deleted meanwhile: nothing to attach the Event to.
			return client.IgnoreNotFound(err)
		}
		ev = problemEvent(corev1.ObjectReference{APIVersion: networkingv1.SchemeGroupVersion.String(), Kind: "NetworkPolicy",
			Namespace: policy.Namespace, Name: policy.Name, UID: policy.UID}, p.Reason, now)
	}
	err := r.Events.Create(ctx, ev)
	if err == nil || !apierrors.IsAlreadyExists(err) {
		if err != nil {
			return fmt.Errorf("creating Event %s/%s: %w", ev.Namespace, ev.Name, err)
		}
		return nil
	}
	var existing eventsv1.Event
	if err := r.Events.Get(ctx, client.ObjectKeyFromObject(ev), &existing); err != nil {
		return client.IgnoreNotFound(err) // expired meanwhile: fine either way
	}
	last := existing.EventTime.Time
	count := int32(1)
	if existing.Series != nil {
		last, count = existing.Series.LastObservedTime.Time, existing.Series.Count
	}
	if now.Sub(last) < seriesRefresh {
		return nil
	}
	existing.Series = &eventsv1.EventSeries{Count: count + 1, LastObservedTime: metav1.NewMicroTime(now)}
	if err := r.Events.Update(ctx, &existing); err != nil {
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil // another agent counted it first, or it expired
		}
		return fmt.Errorf("updating the series of Event %s/%s: %w", ev.Namespace, ev.Name, err)
	}
	return nil
}

// problemEvent is the Event of one problem of policy. Its name is the same
// on every node. The Event of a cluster-scoped policy lives in the
// default namespace, as kubectl describe looks for it.
func problemEvent(policy corev1.ObjectReference, reason string, now time.Time) *eventsv1.Event {
	note := reason + " (that part matches nothing)"
	if len(note) > maxNote {
		note = note[:maxNote]
	}
	return &eventsv1.Event{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: eventNamespace(policy.Namespace),
			Name:      eventName(policy.Name, policy.UID, reason),
		},
		EventTime:           metav1.NewMicroTime(now),
		ReportingController: eventController,
		ReportingInstance:   eventInstance,
		Action:              eventAction,
		Reason:              EventReason,
		Type:                corev1.EventTypeWarning,
		Note:                note,
		Regarding:           policy,
	}
}

func eventNamespace(ns string) string {
	if ns == "" {
		return metav1.NamespaceDefault
	}
	return ns
}

// eventName is "<policy name>.<hash of the policy's UID and the problem>":
// deterministic across nodes, distinct per problem, new for a policy
// deleted and created again (new UID), and a valid object name (a policy
// name is a DNS subdomain; it is shortened to leave room for the hash).
func eventName(policyName string, uid types.UID, reason string) string {
	sum := sha256.Sum256([]byte(string(uid) + "\x00" + EventReason + "\x00" + reason))
	suffix := hex.EncodeToString(sum[:8])
	const maxName = 253
	if room := maxName - 1 - len(suffix); len(policyName) > room {
		policyName = strings.TrimRight(policyName[:room], "-.")
	}
	return policyName + "." + suffix
}
