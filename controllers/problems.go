package controllers

import (
	"context"
	"strings"
	"sync"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/nftpol/nftpol/selectors"
)

// ProblemReporter tells people about the parts of policies this node cannot
// enforce: one log line and one Kubernetes Event per policy and reason, for
// as long as the problem lasts. A problem that goes away and comes back is
// reported again.
type ProblemReporter struct {
	Reader   client.Reader
	Recorder events.EventRecorder // nil: log only
	NodeName string
	Log      logr.Logger

	mu       sync.Mutex
	reported map[selectors.Problem]bool
}

// Report records the problems of one sync.
func (r *ProblemReporter) Report(ctx context.Context, problems []selectors.Problem) {
	r.mu.Lock()
	defer r.mu.Unlock()
	current := make(map[selectors.Problem]bool, len(problems))
	for _, p := range problems {
		current[p] = true
		if r.reported[p] {
			continue
		}
		r.Log.Info("policy cannot be fully enforced; the affected part matches nothing", "policy", p.Policy, "reason", p.Reason)
		r.emitEvent(ctx, p)
	}
	r.reported = current
}

func (r *ProblemReporter) emitEvent(ctx context.Context, p selectors.Problem) {
	if r.Recorder == nil {
		return
	}
	ns, name, ok := strings.Cut(p.Policy, "/")
	if !ok {
		return
	}
	var policy networkingv1.NetworkPolicy
	if err := r.Reader.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, &policy); err != nil {
		// Deleted meanwhile: nothing to attach the Event to.
		return
	}
	r.Recorder.Eventf(&policy, nil, corev1.EventTypeWarning, "PartlyUnenforceable", "Enforce",
		"node %s: %s (that part matches nothing)", r.NodeName, p.Reason)
}
