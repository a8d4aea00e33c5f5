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
	// byIP is the owner of every address (AddressOwners). Every pod in
	// the index holds only the addresses it owns.
	byIP map[netip.Addr]*Pod
}

func newIndex(s *State) *index {
	ix := &index{
		podsByNamespace: map[string][]*Pod{},
		namespaceLabels: make(map[string]labels.Set, len(s.Namespaces)),
		byIP:            AddressOwners(s.Pods),
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
		if p = ix.ownedPart(p); p == nil {
			continue
		}
		if _, ok := ix.namespaceLabels[p.Namespace]; !ok {
			ix.addNamespace(p.Namespace, nil)
		}
		ix.podsByNamespace[p.Namespace] = append(ix.podsByNamespace[p.Namespace], p)
	}
	return ix
}

// ownedPart returns p as the model sees it: p itself when it owns all its
// addresses, nil when it owns none, else a copy with the addresses it owns
// (which then owns them in byIP). A pod's labels and named ports thus never
// reach a set for an address another pod owns. Copies cost the Builder its
// reuse of the namespace while the conflict lasts, which is rare and short.
func (ix *index) ownedPart(p *Pod) *Pod {
	var owned []netip.Addr
	for _, ip := range p.IPs {
		if ix.byIP[ip] == p {
			owned = append(owned, ip)
		}
	}
	switch len(owned) {
	case len(p.IPs):
		return p
	case 0:
		return nil
	}
	part := *p
	part.IPs = owned
	for _, ip := range owned {
		ix.byIP[ip] = &part
	}
	return &part
}

// podByIP returns the endpoint pod that owns each address.
func (ix *index) podByIP() map[netip.Addr]*Pod { return ix.byIP }

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
