package selectors

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// BuildModel returns what node enforces: its endpoint pods that some policy
// isolates, the rules of those policies with peers and named ports resolved,
// and the problems found in those policies (once per policy and reason).
// Policies that select no pod of the node are not parsed at all, so the
// cost follows what the node needs, not the size of the cluster. Equal
// input gives an equal Model.
func BuildModel(node string, s *State) (*Model, []Problem) {
	ix := newIndex(s)
	local := map[string][]*Pod{}
	for _, pods := range ix.podsByNamespace {
		for _, p := range pods {
			if p.NodeName == node {
				local[p.Namespace] = append(local[p.Namespace], p)
			}
		}
	}
	return buildModel(node, ix, local, s.Policies, s, nil)
}

// buildModel builds the model from ix, the index of s, whose endpoint pods
// on node are localByNamespace, and from candidates, the NetworkPolicies
// to consider instead of s.Policies (at least those of the namespaces of
// localByNamespace, in any order). changes, when not nil, lets it reuse
// peer sets of the build before (see Builder).
func buildModel(node string, ix *index, localByNamespace map[string][]*Pod, candidates []*networkingv1.NetworkPolicy, s *State, changes *buildChanges) (*Model, []Problem) {
	b := &modelBuilder{nodes: s.Nodes, ix: ix, changes: changes, addrSets: map[string]*AddrSet{}, portSets: map[string]*PortSet{}, portSetProblems: map[string][]string{}, problemSeen: map[Problem]bool{}}
	model := &Model{}
	isolation := map[*Pod]*PodRules{}
	podRules := func(pod *Pod) *PodRules {
		pr := isolation[pod]
		if pr == nil {
			pr = &PodRules{Key: pod.Key(), IPs: pod.IPs}
			isolation[pod] = pr
		}
		return pr
	}

	policies := make([]*networkingv1.NetworkPolicy, 0, len(candidates))
	for _, np := range candidates {
		if np != nil && len(localByNamespace[np.Namespace]) > 0 {
			policies = append(policies, np)
		}
	}
	slices.SortFunc(policies, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(strings.Compare(a.Namespace, b.Namespace), strings.Compare(a.Name, b.Name))
	})

	for _, np := range policies {
		cp := changes.parse(np)
		selected := changes.selected(np, cp, localByNamespace[np.Namespace])
		if len(selected) == 0 {
			continue
		}
		for _, pr := range cp.problems {
			b.problem(cp.key, pr)
		}
		pr := PolicyRules{Key: cp.key, HasIngress: cp.types[Ingress], HasEgress: cp.types[Egress], Audit: cp.audit}
		for _, dir := range []Direction{Ingress, Egress} {
			if !cp.types[dir] {
				continue
			}
			for _, pod := range selected {
				pr := podRules(pod)
				switch {
				case cp.audit:
					pr.Audit[dir] = append(pr.Audit[dir], cp.key)
				case dir == Egress:
					pr.Egress = append(pr.Egress, cp.key)
				default:
					pr.Ingress = append(pr.Ingress, cp.key)
				}
			}
			for i := range cp.rules[dir] {
				if r, ok := b.rule(cp, dir, &cp.rules[dir][i], selected); ok {
					if dir == Ingress {
						pr.Ingress = append(pr.Ingress, r)
					} else {
						pr.Egress = append(pr.Egress, r)
					}
				}
			}
		}
		model.Policies = append(model.Policies, pr)
	}

	b.clusterPolicies(s, localByNamespace, model, podRules)

	model.Pods = make([]PodRules, 0, len(isolation))
	for _, pr := range isolation {
		for _, dir := range Directions {
			sort.Strings(pr.Audit[dir]) // NetworkPolicy keys and ClusterNetworkPolicy names mixed
		}
		model.Pods = append(model.Pods, *pr)
	}
	slices.SortFunc(model.Pods, func(a, b PodRules) int { return strings.Compare(a.Key, b.Key) })
	model.AddrSets = make([]AddrSet, 0, len(b.addrSets))
	for _, set := range b.addrSets {
		model.AddrSets = append(model.AddrSets, *set)
	}
	slices.SortFunc(model.AddrSets, func(a, b AddrSet) int { return strings.Compare(a.ID, b.ID) })
	for _, set := range b.portSets {
		model.PortSets = append(model.PortSets, *set)
	}
	slices.SortFunc(model.PortSets, func(a, b PortSet) int { return strings.Compare(a.ID, b.ID) })
	return model, b.problems
}

// selectPods returns the pods of local (one namespace's) that cp selects,
// by name.
func selectPods(cp *policy, local []*Pod) []*Pod {
	var selected []*Pod
	for _, pod := range local {
		if cp.selectsPod(pod) {
			selected = append(selected, pod)
		}
	}
	slices.SortFunc(selected, func(a, b *Pod) int { return strings.Compare(a.Name, b.Name) })
	return selected
}

type modelBuilder struct {
	nodes    []*Node
	ix       *index
	changes  *buildChanges
	addrSets map[string]*AddrSet
	portSets map[string]*PortSet
	// portSetProblems are the unresolved named ports of each port set.
	portSetProblems map[string][]string
	problems        []Problem
	problemSeen     map[Problem]bool
}

func (b *modelBuilder) problem(policy, reason string) {
	p := Problem{Policy: policy, Reason: reason}
	if !b.problemSeen[p] {
		b.problemSeen[p] = true
		b.problems = append(b.problems, p)
	}
}

// resolvedRule is a rule as the model holds it, with what resolving it
// found: whether its peers can match at all, and its named ports.
type resolvedRule struct {
	rule    Rule
	ok      bool
	peersOK bool
	named   []port
}

// rule resolves one policy rule. It returns false when the rule can match
// nothing whatever pods come and go (every peer or every port invalid).
// The model's rule (IDs and port ranges) is worked out once per parsed
// policy; later builds only make or update the sets it names, in the
// same order and under the same conditions as the first. The Rule's
// slices are shared by the models of those builds: no one changes a
// model.
func (b *modelBuilder) rule(cp *policy, dir Direction, r *rule, selected []*Pod) (Rule, bool) {
	if rr := r.resolved; rr != nil {
		if !r.allPeers {
			for i := range r.peers {
				b.addrSet(cp.namespace, &r.peers[i])
			}
		}
		if rr.peersOK && len(rr.named) > 0 {
			b.portSet(cp, dir, r, rr.named, selected)
		}
		return rr.rule, rr.ok
	}
	out, ok := b.resolveRule(cp, dir, r, selected)
	return out, ok
}

func (b *modelBuilder) resolveRule(cp *policy, dir Direction, r *rule, selected []*Pod) (Rule, bool) {
	rr := &resolvedRule{}
	r.resolved = rr
	var out Rule
	if r.allPeers {
		out.Peers.All = true
	} else {
		seen := map[string]bool{}
		for i := range r.peers {
			if id := b.addrSet(cp.namespace, &r.peers[i]); id != "" && !seen[id] {
				seen[id] = true
				out.Peers.Sets = append(out.Peers.Sets, id)
			}
		}
		sort.Strings(out.Peers.Sets)
		if len(out.Peers.Sets) == 0 {
			return Rule{}, false
		}
	}
	rr.peersOK = true

	if r.allPorts {
		out.Ports.All = true
		rr.rule, rr.ok = out, true
		return out, true
	}
	for _, p := range r.ports {
		if p.name != "" {
			rr.named = append(rr.named, p)
			continue
		}
		out.Ports.Ranges = append(out.Ports.Ranges, PortRange{Protocol: p.protocol, First: p.first, Last: p.last})
	}
	sortPortRanges(&out.Ports.Ranges)
	if len(rr.named) > 0 {
		out.Ports.Named = b.portSet(cp, dir, r, rr.named, selected)
	}
	if len(out.Ports.Ranges) == 0 && out.Ports.Named == "" {
		return Rule{}, false
	}
	rr.rule, rr.ok = out, true
	return out, true
}

func sortPortRanges(rs *[]PortRange) {
	s := *rs
	sort.Slice(s, func(i, j int) bool {
		if s[i].Protocol != s[j].Protocol {
			return s[i].Protocol < s[j].Protocol
		}
		if s[i].First != s[j].First {
			return s[i].First < s[j].First
		}
		return s[i].Last < s[j].Last
	})
	out := s[:0]
	for i, r := range s {
		if i > 0 && r == s[i-1] {
			continue
		}
		out = append(out, r)
	}
	*rs = out
}

// addrSet returns the ID of the set of a peer, building it on first use.
func (b *modelBuilder) addrSet(namespace string, pe *peer) string {
	if pe.kind == peerNone {
		return ""
	}
	if _, ok := b.addrSets[pe.id]; ok {
		return pe.id
	}
	set := &AddrSet{ID: pe.id}
	switch pe.kind {
	case peerIPBlock:
		set.Description = describePeer(pe, namespace)
		set.Ranges = append([]AddrRange(nil), pe.block.ranges...)
	case peerNodes:
		set.Description = describePeer(pe, namespace)
		for _, n := range b.nodes {
			if n != nil && pe.nsSel.Matches(labels.Set(n.Labels)) {
				set.Addrs = append(set.Addrs, n.IPs...)
			}
		}
		set.Addrs = sortAddrs(set.Addrs)
	case peerPods, peerNsPods:
		if updated := b.changes.updatedPeerSet(b.ix, pe); updated != nil {
			b.addrSets[pe.id] = updated
			return pe.id
		}
		set.Description = describePeer(pe, namespace)
		byNamespace := map[string][]*Pod{}
		var lists [][]*Pod
		b.ix.peerNamespaces(pe, namespace, func(ns string) {
			pods := b.ix.podsOf(pe, ns)
			byNamespace[ns] = pods
			lists = append(lists, pods)
		})
		set.Addrs = podAddrs(lists...)
		b.changes.remember(pe, set, byNamespace)
	}
	b.addrSets[pe.id] = set
	return pe.id
}

// describePeer says in words what defines the members of pe, a peer of a
// policy in namespace ns: only what its ID is made of, so every policy
// sharing the set describes it alike.
func describePeer(pe *peer, ns string) string {
	if strings.HasPrefix(pe.id, "cidrs=") {
		return "networks " + strings.ReplaceAll(strings.TrimPrefix(pe.id, "cidrs="), ",", ", ")
	}
	if pe.kind == peerIPBlock {
		return "ipBlock " + strings.ReplaceAll(strings.TrimPrefix(pe.id, "cidr="), "|except=", " except ")
	}
	if pe.kind == peerNodes {
		return "addresses of the nodes matching " + selectorID(pe.nsSel)
	}
	if pe.kind == peerPods {
		return fmt.Sprintf("pods in namespace %s matching %s", ns, selectorID(pe.podSel))
	}
	return fmt.Sprintf("pods matching %s in namespaces matching %s", selectorID(pe.podSel), selectorID(pe.nsSel))
}

func sortAddrs(as []netip.Addr) []netip.Addr {
	slices.SortFunc(as, netip.Addr.Compare)
	out := as[:0]
	for i, a := range as {
		if i > 0 && a == as[i-1] {
			continue
		}
		out = append(out, a)
	}
	return out
}

// portSet resolves the named ports of a rule to (address, protocol, port)
// entries: for ingress on the policy's selected local pods, for egress on
// every pod the rule's peers can reach.
func (b *modelBuilder) portSet(cp *policy, dir Direction, r *rule, named []port, selected []*Pod) string {
	var names []string
	for _, p := range named {
		names = append(names, p.protocol.String()+"/"+p.name)
	}
	sort.Strings(names)
	var id string
	var candidates []*Pod
	if dir == Ingress {
		id = "in|ns=" + cp.namespace + "|pod=" + selectorID(cp.podSel) + "|ports=" + strings.Join(names, ",")
		candidates = selected
	} else {
		var peerIDs []string
		if r.allPeers {
			peerIDs = []string{"*"}
		}
		for i := range r.peers {
			if r.peers[i].kind != peerNone {
				peerIDs = append(peerIDs, r.peers[i].id)
			}
		}
		sort.Strings(peerIDs)
		id = "eg|peers=" + strings.Join(peerIDs, ";") + "|ports=" + strings.Join(names, ",")
		candidates = b.egressCandidates(cp, r)
		if b.changes != nil {
			b.changes.egressNamedPorts = true
		}
	}
	if _, ok := b.portSets[id]; ok {
		// Every policy sharing the set hears of its unresolved names, not
		// only the one that happened to build it.
		for _, reason := range b.portSetProblems[id] {
			b.problem(cp.key, reason)
		}
		return id
	}
	if dir == Ingress {
		// Resolved on the selected pods alone: the set of the last build
		// holds while they are the same (see buildChanges.selected).
		if set, problems, ok := b.changes.ingressPortSet(id, selected); ok {
			b.portSets[id], b.portSetProblems[id] = set, problems
			for _, reason := range problems {
				b.problem(cp.key, reason)
			}
			return id
		}
		defer func() { b.changes.rememberIngressPortSet(id, selected, b.portSets[id], b.portSetProblems[id]) }()
	}
	set := &PortSet{ID: id, Description: fmt.Sprintf("named ports %s of %s", strings.Join(names, ","), describeCandidates(dir, cp, r))}
	for _, p := range named {
		found := false
		for _, pod := range candidates {
			if n, ok := pod.lookupPort(p.name, p.protocol); ok {
				found = true
				for _, ip := range pod.IPs {
					set.Entries = append(set.Entries, PortEntry{Addr: ip, Protocol: p.protocol, Port: n})
				}
			}
		}
		if !found && len(candidates) > 0 {
			reason := fmt.Sprintf("named port %s/%s is defined by none of the pods it applies to", p.protocol, p.name)
			b.portSetProblems[id] = append(b.portSetProblems[id], reason)
			b.problem(cp.key, reason)
		}
	}
	sort.Slice(set.Entries, func(i, j int) bool {
		a, c := set.Entries[i], set.Entries[j]
		if a.Addr != c.Addr {
			return a.Addr.Less(c.Addr)
		}
		if a.Protocol != c.Protocol {
			return a.Protocol < c.Protocol
		}
		return a.Port < c.Port
	})
	b.portSets[id] = set
	return id
}

// describeCandidates says which pods the named ports of rule r of cp are
// resolved on, from what the port set's ID is made of and nothing else:
// two policies that share the set must describe it alike, so that deleting
// the one seen first changes nothing of the set.
func describeCandidates(dir Direction, cp *policy, r *rule) string {
	if dir == Ingress {
		return "the pods selected by " + selectorID(cp.podSel) + " in namespace " + cp.namespace
	}
	var peers []string
	if r.allPeers {
		peers = []string{"every pod"}
	}
	for i := range r.peers {
		if r.peers[i].kind != peerNone {
			peers = append(peers, describePeer(&r.peers[i], cp.namespace))
		}
	}
	sort.Strings(peers)
	return "the egress peers " + strings.Join(slices.Compact(peers), "; ")
}

// egressCandidates returns the endpoint pods an egress rule's peers cover:
// pods its selectors match and pods whose address lies in its ipBlocks.
func (b *modelBuilder) egressCandidates(cp *policy, r *rule) []*Pod {
	seen := map[*Pod]bool{}
	var out []*Pod
	add := func(p *Pod) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	if r.allPeers {
		for _, pods := range b.ix.podsByNamespace {
			for _, p := range pods {
				add(p)
			}
		}
	}
	for i := range r.peers {
		pe := &r.peers[i]
		switch pe.kind {
		case peerPods, peerNsPods:
			b.ix.peerPods(pe, cp.namespace, func(string) {}, add)
		case peerIPBlock:
			for ip, p := range b.ix.podByIP() {
				if pe.block.contains(ip) {
					add(p)
				}
			}
		}
	}
	return out
}
