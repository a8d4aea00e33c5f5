package selectors

import (
	"maps"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Builder builds one node's models one after another, as the agent's syncs
// do, and reuses from one build to the next the address set of every
// selector peer whose namespaces hold the same endpoint pods and labels as
// at the build before, and every policy object it parsed before. One pod
// change then resolves only the peers of its namespace instead of every
// peer of every local policy.
//
// It relies on what the agent's cache guarantees: a *Pod or a policy passed
// in a State is never changed afterwards; a changed one comes as a new
// object. A State
// made of fresh pods each time (ReadState) is always correct, it only
// reuses nothing. A Builder is not safe for concurrent use.
type Builder struct {
	gen uint64
	// podGen is the build that last saw each endpoint pod.
	podGen map[*Pod]uint64
	// podCount and nsLabels are the endpoint pods per namespace and the
	// namespace labels at the last build.
	podCount map[string]int
	nsLabels map[string]labels.Set
	// peerSets are the address sets of selector peers by peer ID.
	peerSets map[string]*peerSetMemo
	// policies are the parsed policies by object: the informer hands
	// the same object until the policy changes.
	policies map[*networkingv1.NetworkPolicy]*policyMemo
	// clusterPolicies are the parsed ClusterNetworkPolicies by object.
	clusterPolicies map[*cnpv1beta1.ClusterNetworkPolicy]*clusterPolicyMemo
}

type policyMemo struct {
	parsed          *policy
	resourceVersion string
	gen             uint64
}

type peerSetMemo struct {
	set *AddrSet
	// namespaces are the namespaces whose pods the set was made of.
	namespaces []string
	// gen is the last build that used the set; the others are dropped.
	gen uint64
}

// NewBuilder returns a Builder that has built nothing yet.
func NewBuilder() *Builder {
	return &Builder{
		podGen:   map[*Pod]uint64{},
		podCount: map[string]int{},
		nsLabels: map[string]labels.Set{},
		peerSets: map[string]*peerSetMemo{},
		policies: map[*networkingv1.NetworkPolicy]*policyMemo{},

		clusterPolicies: map[*cnpv1beta1.ClusterNetworkPolicy]*clusterPolicyMemo{},
	}
}

// Build returns what BuildModel(node, s) returns.
func (bl *Builder) Build(node string, s *State) (*Model, []Problem) {
	ix := newIndex(s)
	changes := bl.changesSinceLastBuild(ix)
	m, problems := buildModel(node, ix, s, changes)
	for id, memo := range bl.peerSets {
		if memo.gen != bl.gen {
			delete(bl.peerSets, id)
		}
	}
	for np, memo := range bl.policies {
		if memo.gen != bl.gen {
			delete(bl.policies, np)
		}
	}
	for cnp, memo := range bl.clusterPolicies {
		if memo.gen != bl.gen {
			delete(bl.clusterPolicies, cnp)
		}
	}
	return m, problems
}

// changesSinceLastBuild records ix as the new last build and returns what
// differs from the one before.
func (bl *Builder) changesSinceLastBuild(ix *index) *buildChanges {
	bl.gen++
	ch := &buildChanges{builder: bl, dirty: map[string]bool{}}
	total := 0
	counts := make(map[string]int, len(ix.podsByNamespace))
	for ns, pods := range ix.podsByNamespace {
		counts[ns] = len(pods)
		total += len(pods)
		if bl.podCount[ns] != len(pods) {
			ch.dirty[ns] = true
		}
		for _, p := range pods {
			if g, ok := bl.podGen[p]; !ok || g != bl.gen-1 {
				ch.dirty[ns] = true
			}
			bl.podGen[p] = bl.gen
		}
	}
	for ns := range bl.podCount {
		if _, ok := counts[ns]; !ok {
			ch.dirty[ns] = true
		}
	}
	if len(bl.podGen) > total {
		for p, g := range bl.podGen {
			if g != bl.gen {
				delete(bl.podGen, p)
			}
		}
	}
	bl.podCount = counts

	// Namespace labels decide which namespaces a namespaceSelector covers:
	// when any differ, no set of such a peer is reused.
	ch.namespacesChanged = len(ix.namespaceLabels) != len(bl.nsLabels)
	for ns, l := range ix.namespaceLabels {
		if old, ok := bl.nsLabels[ns]; !ok || !maps.Equal(old, l) {
			ch.namespacesChanged = true
			break
		}
	}
	bl.nsLabels = ix.namespaceLabels
	return ch
}

// buildChanges is what one build may reuse from the one before.
type buildChanges struct {
	builder *Builder
	// dirty are the namespaces whose endpoint pods changed.
	dirty             map[string]bool
	namespacesChanged bool
}

// reusable returns the set of a selector peer from the last build when
// nothing it was made of changed.
func (ch *buildChanges) reusable(pe *peer) *AddrSet {
	if ch == nil {
		return nil
	}
	memo := ch.builder.peerSets[pe.id]
	if memo == nil || (pe.kind == peerNsPods && ch.namespacesChanged) {
		return nil
	}
	for _, ns := range memo.namespaces {
		if ch.dirty[ns] {
			return nil
		}
	}
	memo.gen = ch.builder.gen
	return memo.set
}

// parse returns the parsed np, from the last build when it is the same
// object at the same version.
func (ch *buildChanges) parse(np *networkingv1.NetworkPolicy) *policy {
	if ch == nil {
		return parsePolicy(np)
	}
	memo := ch.builder.policies[np]
	if memo == nil || memo.resourceVersion != np.ResourceVersion {
		memo = &policyMemo{parsed: parsePolicy(np), resourceVersion: np.ResourceVersion}
		ch.builder.policies[np] = memo
	}
	memo.gen = ch.builder.gen
	return memo.parsed
}

// remember keeps the set of a selector peer for the next build.
func (ch *buildChanges) remember(pe *peer, set *AddrSet, namespaces []string) {
	if ch == nil {
		return
	}
	ch.builder.peerSets[pe.id] = &peerSetMemo{set: set, namespaces: namespaces, gen: ch.builder.gen}
}
