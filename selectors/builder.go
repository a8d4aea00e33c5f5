package selectors

import (
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"unsafe"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Builder builds one node's models one after another, as the agent's syncs
// do, and keeps between builds what a pod change does not touch: the index
// of endpoint pods by namespace and the address owner table are updated by
// the pods that changed only (SetPod, DeletePod), the address set of every
// selector peer whose namespaces hold the same endpoint pods and labels as
// at the build before is reused, and so is every policy object it parsed
// before. One pod change then costs the pods of its namespace and the
// peers that read them, not a pass over every pod of the cluster. A peer
// set no policy uses is kept a few builds (peerSetRetention), brought up
// to date when a policy uses it again: a policy, NetworkPolicy or
// ClusterNetworkPolicy alike, deleted and created again finds its sets.
//
// Two ways to feed it, which give the same models:
//   - events: SetPod and DeletePod for each pod that changed, SetPolicy
//     and DeletePolicy for each NetworkPolicy that changed, SetNamespace
//     and DeleteNamespace for each namespace that changed, then
//     BuildFromEvents with a State whose Pods, Policies and (once a
//     namespace event was given) Namespaces are ignored (the agent);
//   - states: Build with a whole State; it finds the changed pods,
//     policies and namespaces by comparing pointers, one map lookup per
//     object (tests, benchmarks).
//
// A build after changes that only moved pods of other nodes, with no
// policy or namespace changed (the most common sync by far), does not
// visit the node's policies at all: it hands the last model again with
// the peer sets covering the changed namespaces brought up to date
// (reuseLast).
//
// It relies on what the agent's cache guarantees: a *Pod or a policy passed
// in is never changed afterwards; a changed one comes as a new object, and
// pods have unique namespace/name keys. A State made of fresh pods each
// time (ReadState) is always correct, it only reuses nothing. A Builder is
// not safe for concurrent use.
type Builder struct {
	gen uint64
	// pods are every pod given, endpoint or not, by namespace and name,
	// with the index's view of each (podEntry.view); podCount counts them.
	pods     map[string]map[string]*podEntry
	podCount int
	// owners is the endpoint pod that owns each address (AddressOwners,
	// kept up to date pod by pod); contested holds every claimant of the
	// addresses several endpoint pods claim, usually none.
	owners    addrMap[*Pod]
	contested map[netip.Addr][]*Pod
	// viewDirty are the pods whose owned addresses may have changed since
	// the last build.
	viewDirty map[*Pod]bool
	// localDirty are the namespaces where a pod of the node changed since
	// the last build (a subset of dirty): only there the node's endpoint
	// pods are listed again, elsewhere their slice is kept, and with it
	// what was resolved on it (see buildChanges.selected).
	localDirty map[string]bool
	// dirty are the namespaces where a pod's view changed since the last
	// build.
	dirty map[string]bool
	// ix is the index the builds read, updated for the dirty namespaces
	// only; local holds the endpoint pods of node per namespace.
	ix    *index
	node  string
	local map[string][]*Pod
	// namespaces are the namespace objects' labels by name, given by
	// SetNamespace and DeleteNamespace, or taken from a State's list
	// (fromStateNamespaces); nsDirty are the names set or deleted since
	// the last build, the only ones a build looks at.
	namespaces map[string]*namespaceEntry
	nsDirty    map[string]bool
	// namespaceEvents is true once a namespace was given as an event:
	// BuildFromEvents then ignores the State's Namespaces.
	namespaceEvents bool
	// stateGen counts the States given to Build or read for namespaces.
	stateGen uint64
	// peerSets are the address sets of selector peers by peer ID, kept
	// peerSetRetention builds after their last use: a policy deleted and
	// created again, or one that joins a peer another left, finds its set.
	peerSets map[string]*peerSetMemo
	// policyIndex holds every NetworkPolicy given (SetPolicy, or a
	// Build's State), by namespace and name: a build visits only those of
	// the namespaces with endpoint pods on the node, not every policy of
	// the cluster. policyLists caches each namespace's policies as a
	// slice, dropped when one of them changes; policyCount counts them all.
	policyIndex map[string]map[string]*policyEntry
	policyLists map[string][]*networkingv1.NetworkPolicy
	policyCount int
	// policiesChanged is true when a NetworkPolicy was set or deleted
	// since the last build.
	policiesChanged bool
	// last is what the last build made, when the next may reuse it (see
	// reuseLast); nil when it resolved ClusterNetworkPolicies or egress
	// named ports, which read pods beyond the peer sets.
	last *lastBuild
	// podsChanged is the last build whose dirty namespaces held each
	// namespace, for the namespaces changed in the last peerSetRetention
	// builds; labelsChanged the last build where namespace labels changed.
	// A kept set is current up to its build and stale after these.
	podsChanged   map[string]uint64
	labelsChanged uint64
	// policies are the parsed policies by object: the informer hands
	// the same object until the policy changes.
	policies map[*networkingv1.NetworkPolicy]*policyMemo
	// clusterPolicies are the parsed ClusterNetworkPolicies by object.
	clusterPolicies map[*cnpv1beta1.ClusterNetworkPolicy]*clusterPolicyMemo
	// ingressPortSets are the ingress named-port sets by ID.
	ingressPortSets map[string]*portSetMemo
}

type podEntry struct {
	pod *Pod
	// view is the model's view of the pod, what the index holds for it:
	// the pod, or a copy with the addresses it owns; nil when it is no
	// endpoint or owns no address.
	view *Pod
	// stateGen is the last Build whose State held the pod.
	stateGen uint64
}

type namespaceEntry struct {
	labels map[string]string
	// stateGen is the last State whose Namespaces held it.
	stateGen uint64
}

type policyEntry struct {
	np *networkingv1.NetworkPolicy
	// stateGen is the last Build whose State held the policy.
	stateGen uint64
}

type policyMemo struct {
	parsed          *policy
	resourceVersion string
	gen             uint64
	// selected are the pods parsed selects of local, the endpoint pods of
	// the node in its namespace at the build that resolved them.
	local, selected []*Pod
}

// portSetMemo is an ingress named-port set with the pods it was resolved
// on and the names none of them defines.
type portSetMemo struct {
	candidates []*Pod
	set        *PortSet
	problems   []string
	gen        uint64
}

type peerSetMemo struct {
	set *AddrSet
	// peer is a selector peer whose set this is (every peer of that ID
	// selects alike).
	peer *peer
	// byNamespace holds, for every namespace whose pods the set was made
	// of, the pods that namespace gave it (the index's views, which never
	// change): their addresses are what the namespace gave. A pointer per
	// pod, not its addresses (8 bytes, not 24 per address), and none at
	// all for a peer with no pod selector, which shares the index's slice.
	byNamespace map[string][]*Pod
	// gen is the last build that used the set, and the build up to which
	// its addresses are current; a set unused for peerSetRetention builds
	// is dropped.
	gen uint64
}

// peerSetRetention is how many builds a peer set is kept unused. A kept
// set costs its addresses' memory; making it again costs a pass over
// every pod its peer selects and, in the compiler, every element.
const peerSetRetention = 32

// NewBuilder returns a Builder that has built nothing yet.
func NewBuilder() *Builder {
	return &Builder{
		pods:        map[string]map[string]*podEntry{},
		contested:   map[netip.Addr][]*Pod{},
		viewDirty:   map[*Pod]bool{},
		dirty:       map[string]bool{},
		localDirty:  map[string]bool{},
		ix:          &index{podsByNamespace: map[string][]*Pod{}, namespaceLabels: map[string]labels.Set{}},
		local:       map[string][]*Pod{},
		namespaces:  map[string]*namespaceEntry{},
		nsDirty:     map[string]bool{},
		peerSets:    map[string]*peerSetMemo{},
		podsChanged: map[string]uint64{},
		policies:    map[*networkingv1.NetworkPolicy]*policyMemo{},
		policyIndex: map[string]map[string]*policyEntry{},
		policyLists: map[string][]*networkingv1.NetworkPolicy{},

		clusterPolicies: map[*cnpv1beta1.ClusterNetworkPolicy]*clusterPolicyMemo{},
		ingressPortSets: map[string]*portSetMemo{},
	}
}

// SetPod records p as the pod's current object (nil is ignored). Only
// what p changes is updated: its claims on addresses, and the views of
// the pods whose owned addresses that moves.
func (bl *Builder) SetPod(p *Pod) {
	if p == nil {
		return
	}
	byName := bl.pods[p.Namespace]
	if byName == nil {
		byName = map[string]*podEntry{}
		bl.pods[p.Namespace] = byName
	}
	e := byName[p.Name]
	if e == nil {
		e = &podEntry{}
		byName[p.Name] = e
		bl.podCount++
	} else if e.pod == p {
		return
	} else {
		bl.unclaim(e.pod)
	}
	e.pod = p
	bl.claim(p)
	bl.viewDirty[p] = true
}

// DeletePod forgets the pod namespace/name.
func (bl *Builder) DeletePod(namespace, name string) {
	byName := bl.pods[namespace]
	e := byName[name]
	if e == nil {
		return
	}
	bl.unclaim(e.pod)
	delete(bl.viewDirty, e.pod)
	bl.setView(namespace, e, nil)
	delete(byName, name)
	if len(byName) == 0 {
		delete(bl.pods, namespace)
	}
	bl.podCount--
}

// SetPolicy records np as the NetworkPolicy's current object (nil is
// ignored).
func (bl *Builder) SetPolicy(np *networkingv1.NetworkPolicy) {
	if np == nil {
		return
	}
	byName := bl.policyIndex[np.Namespace]
	if byName == nil {
		byName = map[string]*policyEntry{}
		bl.policyIndex[np.Namespace] = byName
	}
	e := byName[np.Name]
	if e == nil {
		e = &policyEntry{}
		byName[np.Name] = e
		bl.policyCount++
	} else if e.np == np {
		return
	}
	e.np = np
	delete(bl.policyLists, np.Namespace)
	bl.policiesChanged = true
}

// DeletePolicy forgets the NetworkPolicy namespace/name.
func (bl *Builder) DeletePolicy(namespace, name string) {
	byName := bl.policyIndex[namespace]
	if _, ok := byName[name]; !ok {
		return
	}
	delete(byName, name)
	if len(byName) == 0 {
		delete(bl.policyIndex, namespace)
	}
	bl.policyCount--
	delete(bl.policyLists, namespace)
	bl.policiesChanged = true
}

// SetNamespace records ns as the namespace's current object (nil is
// ignored). Once a namespace is given this way, BuildFromEvents takes the
// namespaces from these events only, not from its State.
func (bl *Builder) SetNamespace(ns *Namespace) {
	if ns == nil {
		return
	}
	bl.namespaceEvents = true
	bl.setNamespace(ns)
}

// DeleteNamespace forgets the namespace name (see SetNamespace).
func (bl *Builder) DeleteNamespace(name string) {
	bl.namespaceEvents = true
	if _, ok := bl.namespaces[name]; ok {
		delete(bl.namespaces, name)
		bl.nsDirty[name] = true
	}
}

// setNamespace records ns, unless it holds the same labels (at once when
// it is the same map, which an unchanged object of the agent's cache
// hands every time).
func (bl *Builder) setNamespace(ns *Namespace) *namespaceEntry {
	e := bl.namespaces[ns.Name]
	if e == nil {
		e = &namespaceEntry{}
		bl.namespaces[ns.Name] = e
	} else if sameLabels(e.labels, ns.Labels) {
		return e
	}
	e.labels = ns.Labels
	bl.nsDirty[ns.Name] = true
	return e
}

// namespacesFromState turns a State's list of namespaces into the events
// it implies: one map lookup per namespace, for the callers that do not
// give namespace events (Build; BuildFromEvents before any).
func (bl *Builder) namespacesFromState(list []*Namespace) {
	bl.stateGen++
	seen := 0
	for _, ns := range list {
		if ns == nil {
			continue
		}
		if e := bl.setNamespace(ns); e.stateGen != bl.stateGen {
			e.stateGen = bl.stateGen
			seen++
		}
	}
	if seen != len(bl.namespaces) {
		for name, e := range bl.namespaces {
			if e.stateGen != bl.stateGen {
				delete(bl.namespaces, name)
				bl.nsDirty[name] = true
			}
		}
	}
}

// localPolicies returns the policies of the namespaces with endpoint pods
// on the node (bl.local), the only ones a model can hold.
func (bl *Builder) localPolicies() []*networkingv1.NetworkPolicy {
	var out []*networkingv1.NetworkPolicy
	for ns := range bl.local {
		list, ok := bl.policyLists[ns]
		if !ok {
			byName := bl.policyIndex[ns]
			if len(byName) == 0 {
				continue
			}
			list = make([]*networkingv1.NetworkPolicy, 0, len(byName))
			for _, e := range byName {
				list = append(list, e.np)
			}
			bl.policyLists[ns] = list
		}
		out = append(out, list...)
	}
	return out
}

// claim adds p's claims on its addresses to the owner table.
func (bl *Builder) claim(p *Pod) {
	if !p.IsEndpoint() {
		return
	}
	for _, ip := range p.IPs {
		o, ok := bl.owners.get(ip)
		if !ok {
			bl.owners.set(ip, p)
			continue
		}
		c := bl.contested[ip]
		if len(c) == 0 {
			c = append(c, o)
		}
		bl.contested[ip] = append(c, p)
		if p.claimsBefore(o) {
			bl.owners.set(ip, p)
			bl.viewDirty[o] = true
		}
	}
}

// unclaim removes p's claims; an address another pod claims too goes to
// the best remaining claimant.
func (bl *Builder) unclaim(p *Pod) {
	if !p.IsEndpoint() {
		return
	}
	for _, ip := range p.IPs {
		c, ok := bl.contested[ip]
		if !ok {
			if o, _ := bl.owners.get(ip); o == p {
				bl.owners.delete(ip)
			}
			continue
		}
		for i, q := range c {
			if q == p {
				c = append(c[:i:i], c[i+1:]...)
				break
			}
		}
		best := c[0]
		for _, q := range c[1:] {
			if q.claimsBefore(best) {
				best = q
			}
		}
		if len(c) == 1 {
			delete(bl.contested, ip)
		} else {
			bl.contested[ip] = c
		}
		if o, _ := bl.owners.get(ip); o != best {
			bl.owners.set(ip, best)
			bl.viewDirty[best] = true
		}
	}
}

// setView records the index's view of the pod, marking its namespace
// dirty when it changed.
func (bl *Builder) setView(namespace string, e *podEntry, view *Pod) {
	if e.view == view {
		return
	}
	if bl.onNode(e.view) || bl.onNode(view) {
		bl.localDirty[namespace] = true
	}
	e.view = view
	bl.dirty[namespace] = true
}

// entry returns the Builder's entry of p's key, nil when it has none.
func (bl *Builder) entry(p *Pod) *podEntry {
	return bl.pods[p.Namespace][p.Name]
}

// onNode reports whether view is an endpoint pod of the node of the last
// build.
func (bl *Builder) onNode(view *Pod) bool {
	return view != nil && view.NodeName == bl.node
}

// viewOf returns the pod as the model sees it (see index.ownedPart): the
// pod, a copy with the addresses it owns, or nil.
func (bl *Builder) viewOf(p *Pod) *Pod {
	if !p.IsEndpoint() {
		return nil
	}
	return withOwnedIPs(p, func(ip netip.Addr) bool { o, _ := bl.owners.get(ip); return o == p })
}

// Owner returns the endpoint pod that owns the address, as of the pods
// given so far (see AddressOwners).
func (bl *Builder) Owner(ip netip.Addr) (*Pod, bool) {
	return bl.owners.get(ip)
}

// LocalEndpoints returns how many endpoint pods of the node of the last
// build own an address.
func (bl *Builder) LocalEndpoints() int {
	n := 0
	for _, pods := range bl.local {
		n += len(pods)
	}
	return n
}

// Build returns what BuildModel(node, s) returns.
func (bl *Builder) Build(node string, s *State) (*Model, []Problem) {
	bl.stateGen++
	seen := 0
	for _, p := range s.Pods {
		if p == nil {
			continue
		}
		seen++
		e := bl.entry(p)
		if e == nil || e.pod != p {
			bl.SetPod(p)
			e = bl.entry(p)
		}
		e.stateGen = bl.stateGen
	}
	if seen != bl.podCount {
		for ns, byName := range bl.pods {
			for name, e := range byName {
				if e.stateGen != bl.stateGen {
					bl.DeletePod(ns, name)
				}
			}
		}
	}
	seen = 0
	for _, np := range s.Policies {
		if np == nil {
			continue
		}
		seen++
		bl.SetPolicy(np)
		bl.policyIndex[np.Namespace][np.Name].stateGen = bl.stateGen
	}
	if seen != bl.policyCount {
		for ns, byName := range bl.policyIndex {
			for name, e := range byName {
				if e.stateGen != bl.stateGen {
					bl.DeletePolicy(ns, name)
				}
			}
		}
	}
	bl.namespacesFromState(s.Namespaces)
	return bl.build(node, s)
}

// BuildFromEvents returns what BuildModel returns for s with the pods
// given by SetPod and DeletePod instead of s.Pods, and the NetworkPolicies
// given by SetPolicy and DeletePolicy instead of s.Policies.
// The namespaces too come from SetNamespace and DeleteNamespace once one
// was given so; until then from s.Namespaces.
func (bl *Builder) BuildFromEvents(node string, s *State) (*Model, []Problem) {
	if !bl.namespaceEvents {
		bl.namespacesFromState(s.Namespaces)
	}
	return bl.build(node, s)
}

// build builds the model of node from what the Builder was given.
func (bl *Builder) build(node string, s *State) (*Model, []Problem) {
	ch := bl.update(node)
	if m, problems, ok := bl.reuseLast(ch, s); ok {
		// Nothing of the last build went unused: nothing to forget.
		return m, problems
	}
	m, problems := buildModel(node, bl.ix, bl.local, bl.localPolicies(), s, ch)
	bl.policiesChanged = false
	bl.last = nil
	if len(s.ClusterPolicies) == 0 && !ch.egressNamedPorts {
		bl.last = &lastBuild{model: m, problems: problems, policies: ch.usedPolicies, portSets: ch.usedPortSets}
	}
	for id, memo := range bl.peerSets {
		if memo.gen+peerSetRetention <= bl.gen {
			delete(bl.peerSets, id)
		}
	}
	for ns, gen := range bl.podsChanged {
		if gen+peerSetRetention <= bl.gen {
			delete(bl.podsChanged, ns) // older than every kept set
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
	for id, memo := range bl.ingressPortSets {
		if memo.gen != bl.gen {
			delete(bl.ingressPortSets, id)
		}
	}
	return m, problems
}

// update brings the index up to date with the pods and namespaces changed
// since the last build and returns what the build may reuse.
func (bl *Builder) update(node string) *buildChanges {
	bl.gen++
	for p := range bl.viewDirty {
		if e := bl.entry(p); e != nil && e.pod == p {
			bl.setView(p.Namespace, e, bl.viewOf(p))
		}
	}
	// New maps, not cleared ones: a map keeps the room it once needed
	// (every pod, after the first sync), and ranging over an empty map
	// costs that room at every build.
	bl.viewDirty = map[*Pod]bool{}
	ch := &buildChanges{builder: bl, dirty: bl.dirty, localChanged: len(bl.localDirty) > 0}
	bl.dirty = map[string]bool{}
	localDirty := bl.localDirty
	bl.localDirty = map[string]bool{}

	ix := bl.ix
	if len(ch.dirty) > 0 {
		ix.byIP = nil
	}
	nodeChanged := node != bl.node
	if nodeChanged {
		// Another node: every namespace's local pods are recomputed.
		bl.node = node
		ch.localChanged = true
		clear(bl.local)
		for ns := range bl.pods {
			ch.dirty[ns] = true
		}
		for ns := range ix.podsByNamespace {
			ch.dirty[ns] = true
		}
	}
	for ns := range ch.dirty {
		bl.podsChanged[ns] = bl.gen
		list := bl.views(ns)
		if len(list) == 0 {
			if _, ok := ix.podsByNamespace[ns]; ok {
				bl.nsDirty[ns] = true // may be known by its pods only
			}
			delete(ix.podsByNamespace, ns)
			delete(bl.local, ns)
			continue
		}
		if _, ok := ix.podsByNamespace[ns]; !ok {
			bl.nsDirty[ns] = true
		}
		// Always a new slice, never the old one refilled: peer sets keep
		// the old one as what the namespace gave them (peerSetMemo).
		ix.podsByNamespace[ns] = list
		if !localDirty[ns] && !nodeChanged {
			continue // the same pods of the node: their slice is kept
		}
		var local []*Pod
		for _, p := range list {
			if p.NodeName == node {
				local = append(local, p)
			}
		}
		if len(local) > 0 {
			bl.local[ns] = local
		} else {
			delete(bl.local, ns)
		}
	}

	// Namespace labels decide which namespaces a namespaceSelector covers:
	// when any differ, no set of such a peer is reused. Only the
	// namespaces set, deleted, or given or left by their last pod since
	// the last build are looked at.
	for name := range bl.nsDirty {
		var want labels.Set
		if e, ok := bl.namespaces[name]; ok {
			want = namespaceLabelSet(name, e.labels)
		} else if _, ok := ix.podsByNamespace[name]; ok {
			want = namespaceLabelSet(name, nil)
		}
		old, had := ix.namespaceLabels[name]
		switch {
		case want == nil && had:
			delete(ix.namespaceLabels, name)
			ix.namespaceNames = slices.DeleteFunc(ix.namespaceNames, func(n string) bool { return n == name })
			ch.namespacesChanged = true
		case want != nil && !had:
			ix.namespaceNames = append(ix.namespaceNames, name)
			fallthrough
		case want != nil && !maps.Equal(old, want):
			ix.namespaceLabels[name] = want
			ch.namespacesChanged = true
		}
	}
	bl.nsDirty = map[string]bool{}
	if ch.namespacesChanged {
		bl.labelsChanged = bl.gen
	}
	return ch
}

// views returns the views of the pods of namespace ns that have one, in a
// slice of exactly their number (the index keeps it), nil for none.
func (bl *Builder) views(ns string) []*Pod {
	n := 0
	for _, e := range bl.pods[ns] {
		if e.view != nil {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	list := make([]*Pod, 0, n)
	for _, e := range bl.pods[ns] {
		if e.view != nil {
			list = append(list, e.view)
		}
	}
	return list
}

// sameLabels reports whether two label maps are equal: at once when they
// are the same map (an unchanged object of the agent's cache hands the
// same one to every sync), else by comparing them.
func sameLabels(a, b map[string]string) bool {
	return reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer() || maps.Equal(a, b)
}

// sameSlice reports whether a and b are the same slice (not only equal).
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && unsafe.SliceData(a) == unsafe.SliceData(b)
}

// buildChanges is what one build may reuse from the one before.
type buildChanges struct {
	builder *Builder
	// dirty are the namespaces whose endpoint pods changed.
	dirty             map[string]bool
	namespacesChanged bool
	// localChanged is true when the endpoint pods of the node changed.
	localChanged bool
	// usedPolicies and usedPortSets are the parsed policies and ingress
	// named-port sets this build used; egressNamedPorts is true when it
	// resolved egress named ports, whose pods are not those of the peer
	// sets alone.
	usedPolicies     []*policyMemo
	usedPortSets     []*portSetMemo
	egressNamedPorts bool
}

// lastBuild is a model with what made it, for the next build to reuse.
type lastBuild struct {
	model    *Model
	problems []Problem
	policies []*policyMemo
	portSets []*portSetMemo
}

// reuseLast returns the last model with its peer sets brought up to
// date, when that is all that changed: only pods of other nodes moved,
// and no policy or namespace label did, so every policy selects the same
// pods of the node with the same rules, named ports and problems. Such a
// change, the most common by far, then costs the sets that cover the
// changed namespaces, not a pass over the node's policies.
func (bl *Builder) reuseLast(ch *buildChanges, s *State) (*Model, []Problem, bool) {
	last := bl.last
	if last == nil || ch.localChanged || ch.namespacesChanged || bl.policiesChanged || len(s.ClusterPolicies) > 0 {
		return nil, nil, false
	}
	m := *last.model
	cloned := false
	for i := range m.AddrSets {
		memo := bl.peerSets[m.AddrSets[i].ID]
		if memo == nil {
			continue // not made of pods
		}
		set := ch.updatedPeerSet(bl.ix, memo.peer)
		if set == nil {
			// Not expected with the labels unchanged; a whole build is
			// right anyway, and finds the sets updated so far current.
			return nil, nil, false
		}
		if set.Version != m.AddrSets[i].Version {
			if !cloned {
				m.AddrSets, cloned = slices.Clone(m.AddrSets), true
			}
			m.AddrSets[i] = *set
		}
	}
	for _, memo := range last.policies {
		memo.gen = bl.gen
	}
	for _, memo := range last.portSets {
		memo.gen = bl.gen
	}
	last.model = &m
	return &m, slices.Clone(last.problems), true
}

// updatedPeerSet returns the set of a selector peer from an earlier build,
// with the addresses of the namespaces whose pods changed since resolved
// again: a pod change costs the pods of its namespace and a merge of
// sorted addresses, not the pods of every namespace the peer covers. It
// returns nil when the set must be made from scratch: not kept, or
// namespace labels changed since and the peer selects namespaces.
func (ch *buildChanges) updatedPeerSet(ix *index, pe *peer) *AddrSet {
	if ch == nil {
		return nil
	}
	bl := ch.builder
	memo := bl.peerSets[pe.id]
	if memo == nil || (pe.kind == peerNsPods && bl.labelsChanged > memo.gen) {
		return nil
	}
	var stale []string
	if memo.gen+1 == bl.gen {
		// Used by the last build: only this build's changes are new.
		for ns := range ch.dirty {
			if _, ok := memo.byNamespace[ns]; ok {
				stale = append(stale, ns)
			}
		}
	} else {
		for ns := range memo.byNamespace {
			if bl.podsChanged[ns] > memo.gen {
				stale = append(stale, ns)
			}
		}
	}
	memo.gen = bl.gen
	if len(stale) == 0 {
		return memo.set
	}
	before, now := make([][]*Pod, 0, len(stale)), make([][]*Pod, 0, len(stale))
	for _, ns := range stale {
		before = append(before, memo.byNamespace[ns])
		pods := ix.podsOf(pe, ns)
		memo.byNamespace[ns] = pods
		now = append(now, pods)
	}
	// What the stale namespaces gave before and give now differ by the
	// addresses of the pods that changed: the set's new content is the old
	// one with that difference applied, found by binary search and copied
	// in runs, and the compiler gets the difference itself (Delta).
	// Namespaces own distinct addresses, so an address is in gone at most
	// once and the old set holds no address of fresh but those of gone.
	gone, fresh := podAddrs(before...), podAddrs(now...)
	removed, added := addrsMinus(gone, fresh), addrsMinus(fresh, gone)
	if len(removed) == 0 && len(added) == 0 {
		return memo.set // same content, same Version: the compiler skips it
	}
	merged := applyAddrDelta(memo.set.Addrs, removed, added)
	if len(merged) == 0 {
		merged = nil // as a set made from scratch
	}
	memo.set = &AddrSet{ID: memo.set.ID, Description: memo.set.Description, Addrs: merged, Version: &SetVersion{},
		Delta: &AddrSetDelta{From: memo.set.Version, Added: added, Removed: removed}}
	return memo.set
}

// addrsMinus returns the addresses of a that are not in b, both ascending.
func addrsMinus(a, b []netip.Addr) []netip.Addr {
	var out []netip.Addr
	j := 0
	for _, x := range a {
		for j < len(b) && b[j].Less(x) {
			j++
		}
		if j < len(b) && b[j] == x {
			continue
		}
		out = append(out, x)
	}
	return out
}

// applyAddrDelta returns set (ascending) without removed and with added
// (both ascending): each change is found by binary search and the runs
// between changes are copied whole, so it costs a copy of the set, not a
// comparison per address. An added address already in set is kept once.
func applyAddrDelta(set, removed, added []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, len(set)-len(removed)+len(added))
	i, r, a := 0, 0, 0
	for r < len(removed) || a < len(added) {
		if a == len(added) || r < len(removed) && removed[r].Less(added[a]) {
			k, found := slices.BinarySearchFunc(set[i:], removed[r], netip.Addr.Compare)
			out = append(out, set[i:i+k]...)
			i += k
			if found {
				i++
			}
			r++
			continue
		}
		k, found := slices.BinarySearchFunc(set[i:], added[a], netip.Addr.Compare)
		out = append(out, set[i:i+k]...)
		out = append(out, added[a])
		i += k
		if found {
			i++
		}
		a++
	}
	return append(out, set[i:]...)
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
	if memo.gen != ch.builder.gen {
		memo.gen = ch.builder.gen
		ch.usedPolicies = append(ch.usedPolicies, memo)
	}
	return memo.parsed
}

// selected returns the pods np (parsed: cp) selects of local, the node's
// endpoint pods of its namespace, sorted by name: those of the last build
// when local is the same slice, which the Builder replaces whenever a pod
// of the namespace changes.
func (ch *buildChanges) selected(np *networkingv1.NetworkPolicy, cp *policy, local []*Pod) []*Pod {
	if ch == nil {
		return selectPods(cp, local)
	}
	memo := ch.builder.policies[np] // made by parse in this build
	if memo == nil {
		return selectPods(cp, local)
	}
	if !sameSlice(memo.local, local) {
		memo.local, memo.selected = local, selectPods(cp, local)
	}
	return memo.selected
}

// ingressPortSet returns the ingress named-port set id of the last build
// and its problems when it was resolved on the same selected pods (the
// same slice, see selected).
func (ch *buildChanges) ingressPortSet(id string, selected []*Pod) (*PortSet, []string, bool) {
	if ch == nil {
		return nil, nil, false
	}
	memo := ch.builder.ingressPortSets[id]
	if memo == nil || !sameSlice(memo.candidates, selected) {
		return nil, nil, false
	}
	if memo.gen != ch.builder.gen {
		memo.gen = ch.builder.gen
		ch.usedPortSets = append(ch.usedPortSets, memo)
	}
	return memo.set, memo.problems, true
}

// rememberIngressPortSet keeps an ingress named-port set for the next
// build.
func (ch *buildChanges) rememberIngressPortSet(id string, selected []*Pod, set *PortSet, problems []string) {
	if ch == nil {
		return
	}
	memo := &portSetMemo{candidates: selected, set: set, problems: problems, gen: ch.builder.gen}
	ch.builder.ingressPortSets[id] = memo
	ch.usedPortSets = append(ch.usedPortSets, memo)
}

// remember keeps the set of a selector peer for the next build, with the
// pods each namespace gave it.
func (ch *buildChanges) remember(pe *peer, set *AddrSet, byNamespace map[string][]*Pod) {
	if ch == nil {
		return
	}
	set.Version = &SetVersion{}
	ch.builder.peerSets[pe.id] = &peerSetMemo{set: set, peer: pe, byNamespace: byNamespace, gen: ch.builder.gen}
}
