package selectors

import (
	"net/netip"

	"k8s.io/apimachinery/pkg/labels"
)

// index holds the cluster state in the shapes lookups need: endpoint pods by
// namespace and by address, namespace labels by name.
type index struct {
	podsByNamespace map[string][]*Pod
	namespaceLabels map[string]labels.Set
	// namespaceNames is every namespace known from objects or pods.
	namespaceNames []string
	// byIP is built on first use (the evaluator, ipBlock egress peers with
	// named ports): most syncs never need it, and at 100k pods it is the
	// largest map of the index.
	byIP map[netip.Addr]*Pod
}

func newIndex(s *State) *index {
	ix := &index{
		podsByNamespace: map[string][]*Pod{},
		namespaceLabels: make(map[string]labels.Set, len(s.Namespaces)),
	}
	for _, ns := range s.Namespaces {
		if ns == nil {
			continue
		}
		ix.addNamespace(ns.Name, ns.Labels)
	}
	for _, p := range s.Pods {
		if p == nil || !p.IsEndpoint() {
			continue
		}
		if _, ok := ix.namespaceLabels[p.Namespace]; !ok {
			ix.addNamespace(p.Namespace, nil)
		}
		ix.podsByNamespace[p.Namespace] = append(ix.podsByNamespace[p.Namespace], p)
	}
	return ix
}

// podByIP returns the endpoint pod of each address.
func (ix *index) podByIP() map[netip.Addr]*Pod {
	if ix.byIP == nil {
		ix.byIP = map[netip.Addr]*Pod{}
		for _, pods := range ix.podsByNamespace {
			for _, p := range pods {
				for _, ip := range p.IPs {
					ix.byIP[ip] = p
				}
			}
		}
	}
	return ix.byIP
}

// addNamespace records a namespace's labels, with the name label the API
// server always sets, so selectors on it work even for a namespace whose
// object has not been seen.
func (ix *index) addNamespace(name string, l map[string]string) {
	set := make(labels.Set, len(l)+1)
	for k, v := range l {
		set[k] = v
	}
	if _, ok := set[metadataNameLabel]; !ok {
		set[metadataNameLabel] = name
	}
	if _, seen := ix.namespaceLabels[name]; !seen {
		ix.namespaceNames = append(ix.namespaceNames, name)
	}
	ix.namespaceLabels[name] = set
}

// selectsPod reports whether a policy's podSelector selects pod.
func (p *policy) selectsPod(pod *Pod) bool {
	return p.podSel != nil && pod.Namespace == p.namespace && p.podSel.Matches(labels.Set(pod.Labels))
}

// peerPods calls fn for every endpoint pod a selector peer matches, and
// covers for every namespace it takes pods from, whether it has any.
func (ix *index) peerPods(pe *peer, policyNamespace string, covers func(ns string), fn func(*Pod)) {
	matchPods := func(ns string) {
		covers(ns)
		for _, pod := range ix.podsByNamespace[ns] {
			if pe.podSel == nil || pe.podSel.Matches(labels.Set(pod.Labels)) {
				fn(pod)
			}
		}
	}
	switch pe.kind {
	case peerPods:
		matchPods(policyNamespace)
	case peerNsPods:
		for _, ns := range ix.namespaceNames {
			if pe.nsSel.Matches(ix.namespaceLabels[ns]) {
				matchPods(ns)
			}
		}
	}
}

// peerMatchesPod reports whether a selector peer matches pod.
func (ix *index) peerMatchesPod(pe *peer, policyNamespace string, pod *Pod) bool {
	switch pe.kind {
	case peerPods:
		return pod.Namespace == policyNamespace && pe.podSel.Matches(labels.Set(pod.Labels))
	case peerNsPods:
		nsLabels, ok := ix.namespaceLabels[pod.Namespace]
		if !ok || !pe.nsSel.Matches(nsLabels) {
			return false
		}
		return pe.podSel == nil || pe.podSel.Matches(labels.Set(pod.Labels))
	}
	return false
}
