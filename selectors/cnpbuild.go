package selectors

import (
	"fmt"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// clusterPolicies adds to model the ClusterNetworkPolicies that select a
// local pod, and to each selected pod's rules the policies of each tier in
// evaluation order. Like NetworkPolicies, a policy that selects no local
// pod is not resolved at all.
func (b *modelBuilder) clusterPolicies(s *State, localByNamespace map[string][]*Pod, model *Model, podRules func(*Pod) *PodRules) {
	if len(s.ClusterPolicies) == 0 {
		return
	}
	parsed := make([]*clusterPolicy, 0, len(s.ClusterPolicies))
	for _, cnp := range s.ClusterPolicies {
		if cnp != nil {
			parsed = append(parsed, b.changes.parseCluster(cnp))
		}
	}
	sort.Slice(parsed, func(i, j int) bool {
		return ClusterPolicyBefore(parsed[i].priority, parsed[i].name, parsed[j].priority, parsed[j].name)
	})
	namespaces := make([]string, 0, len(localByNamespace))
	for ns := range localByNamespace {
		namespaces = append(namespaces, ns)
	}
	sort.Strings(namespaces)

	for _, cp := range parsed {
		if len(cp.rules[Ingress]) == 0 && len(cp.rules[Egress]) == 0 {
			// Nothing to enforce; its problems are the status's business.
			continue
		}
		var selected []*Pod
		if cp.subjectNs != nil {
			for _, ns := range namespaces {
				if !cp.subjectNs.Matches(b.ix.namespaceLabels[ns]) {
					continue
				}
				for _, pod := range localByNamespace[ns] {
					if cp.subjectPod == nil || cp.subjectPod.Matches(labels.Set(pod.Labels)) {
						selected = append(selected, pod)
					}
				}
			}
		}
		if len(selected) == 0 {
			continue
		}
		sort.Slice(selected, func(i, j int) bool { return selected[i].Key() < selected[j].Key() })
		for _, pr := range cp.problems {
			b.clusterProblem(cp.name, pr)
		}
		out := ClusterPolicyRules{Name: cp.name, Tier: cp.tier, Priority: cp.priority, Audit: cp.audit}
		for _, dir := range Directions {
			if len(cp.rules[dir]) == 0 {
				continue
			}
			for _, pod := range selected {
				t := &podRules(pod).Cluster[dir]
				if cp.audit {
					podRules(pod).Audit[dir] = append(podRules(pod).Audit[dir], cp.name)
				} else if cp.tier == TierAdmin {
					t.Admin = append(t.Admin, cp.name)
				} else {
					t.Baseline = append(t.Baseline, cp.name)
				}
			}
			for i := range cp.rules[dir] {
				if r, ok := b.clusterRule(cp, dir, &cp.rules[dir][i], selected); ok {
					if dir == Egress {
						out.Egress = append(out.Egress, r)
					} else {
						out.Ingress = append(out.Ingress, r)
					}
				}
			}
		}
		model.ClusterPolicies = append(model.ClusterPolicies, out)
	}
	sort.Slice(model.ClusterPolicies, func(i, j int) bool { return model.ClusterPolicies[i].Name < model.ClusterPolicies[j].Name })
}

func (b *modelBuilder) clusterProblem(name, reason string) {
	p := Problem{Policy: name, Cluster: true, Reason: reason}
	if !b.problemSeen[p] {
		b.problemSeen[p] = true
		b.problems = append(b.problems, p)
	}
}

// clusterRule resolves one rule; false when it can match nothing.
func (b *modelBuilder) clusterRule(cp *clusterPolicy, dir Direction, r *clusterRule, selected []*Pod) (ClusterRule, bool) {
	out := ClusterRule{Name: r.name, Index: r.index, Action: r.action}
	if r.allPeers {
		out.Peers.All = true
	} else {
		seen := map[string]bool{}
		for i := range r.peers {
			if id := b.addrSet("", &r.peers[i]); id != "" && !seen[id] {
				seen[id] = true
				out.Peers.Sets = append(out.Peers.Sets, id)
			}
		}
		sort.Strings(out.Peers.Sets)
		if len(out.Peers.Sets) == 0 {
			return ClusterRule{}, false
		}
	}
	if r.allPorts {
		out.Ports.All = true
		return out, true
	}
	var named []string
	for _, p := range r.ports {
		if p.name != "" {
			named = append(named, p.name)
			continue
		}
		out.Ports.Ranges = append(out.Ports.Ranges, PortRange{Protocol: p.protocol, First: p.first, Last: p.last})
	}
	sortPortRanges(&out.Ports.Ranges)
	if len(named) > 0 {
		out.Ports.Named = b.clusterPortSet(cp, dir, r, named, selected)
	}
	if len(out.Ports.Ranges) == 0 && out.Ports.Named == "" {
		return ClusterRule{}, false
	}
	return out, true
}

// clusterPortSet resolves destinationNamedPort names, which carry no
// protocol, to every container port of that name: for ingress on the
// policy's selected local pods, for egress on the pods its peers select.
// The ID is made of the subject (ingress) or the peers (egress) and the
// names, so policies with the same subject or peers share the set.
func (b *modelBuilder) clusterPortSet(cp *clusterPolicy, dir Direction, r *clusterRule, named []string, selected []*Pod) string {
	sort.Strings(named)
	var id, desc string
	candidates := selected
	if dir == Ingress {
		id = "in|subject=" + cp.subjectID + "|named=" + strings.Join(named, ",")
		desc = fmt.Sprintf("named ports %s of the pods matching %s", strings.Join(named, ","), cp.subjectID)
	} else {
		var peerIDs, descs []string
		seen := map[*Pod]bool{}
		candidates = nil
		for i := range r.peers {
			pe := &r.peers[i]
			if pe.kind != peerNsPods {
				continue // networks and nodes have no named ports (the API refuses them)
			}
			peerIDs = append(peerIDs, pe.id)
			descs = append(descs, describePeer(pe, ""))
			b.ix.peerPods(pe, "", func(string) {}, func(p *Pod) {
				if !seen[p] {
					seen[p] = true
					candidates = append(candidates, p)
				}
			})
		}
		sort.Strings(peerIDs)
		sort.Strings(descs)
		id = "eg|peers=" + strings.Join(peerIDs, ";") + "|named=" + strings.Join(named, ",")
		desc = fmt.Sprintf("named ports %s of the egress peers %s", strings.Join(named, ","), strings.Join(descs, "; "))
	}
	if _, ok := b.portSets[id]; ok {
		for _, reason := range b.portSetProblems[id] {
			b.clusterProblem(cp.name, reason)
		}
		return id
	}
	set := &PortSet{ID: id, Description: desc}
	for _, name := range named {
		found := false
		for _, pod := range candidates {
			for _, np := range pod.Ports {
				if np.Name != name {
					continue
				}
				found = true
				for _, ip := range pod.IPs {
					set.Entries = append(set.Entries, PortEntry{Addr: ip, Protocol: np.Protocol, Port: np.Port})
				}
			}
		}
		if !found && len(candidates) > 0 {
			reason := fmt.Sprintf("named port %s is defined by none of the pods it applies to", name)
			b.portSetProblems[id] = append(b.portSetProblems[id], reason)
			b.clusterProblem(cp.name, reason)
		}
	}
	set.Entries = sortPortEntries(set.Entries)
	b.portSets[id] = set
	return id
}

func sortPortEntries(es []PortEntry) []PortEntry {
	sort.Slice(es, func(i, j int) bool {
		a, c := es[i], es[j]
		if a.Addr != c.Addr {
			return a.Addr.Less(c.Addr)
		}
		if a.Protocol != c.Protocol {
			return a.Protocol < c.Protocol
		}
		return a.Port < c.Port
	})
	out := es[:0]
	for i, e := range es {
		if i == 0 || e != es[i-1] {
			out = append(out, e)
		}
	}
	return out
}

// parseCluster returns the parsed cnp, from the last build when it is the
// same object at the same version.
func (ch *buildChanges) parseCluster(cnp *cnpv1beta1.ClusterNetworkPolicy) *clusterPolicy {
	if ch == nil {
		return parseClusterPolicy(cnp)
	}
	memo := ch.builder.clusterPolicies[cnp]
	if memo == nil || memo.resourceVersion != cnp.ResourceVersion {
		memo = &clusterPolicyMemo{parsed: parseClusterPolicy(cnp), resourceVersion: cnp.ResourceVersion}
		ch.builder.clusterPolicies[cnp] = memo
	}
	memo.gen = ch.builder.gen
	return memo.parsed
}

type clusterPolicyMemo struct {
	parsed          *clusterPolicy
	resourceVersion string
	gen             uint64
}
