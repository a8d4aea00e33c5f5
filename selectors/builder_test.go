package selectors_test

import (
	"fmt"
	"maps"
	"math/rand"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// TestBuilderAgreesWithBuildModel runs Builders through random histories
// of one change at a time (each changed pod, namespace, node or policy a
// new object, as the agent's cache hands them), ClusterNetworkPolicies
// included, and requires every build to equal a fresh BuildModel of the
// same state. Two Builders per node follow each history: one given whole
// States (Build), one given only the pod, policy and namespace events of
// each change (SetPod, DeletePod, SetPolicy, DeletePolicy, SetNamespace,
// DeleteNamespace, then BuildFromEvents), as the agent feeds it; every
// other seed without namespace events, as a caller that gives none.
func TestBuilderAgreesWithBuildModel(t *testing.T) {
	const seeds, steps = 300, 25
	for seed := int64(0); seed < seeds; seed++ {
		r := rand.New(rand.NewSource(seed))
		s := selectorstest.State(selectorstest.RandomCluster(selectorstest.RandomChoices(r, 1024)))
		s.Nodes = randomNodes(r)
		if r.Intn(4) != 0 {
			s.ClusterPolicies = randomClusterPolicies(r)
		}
		builders, fed := map[string]*selectors.Builder{}, map[string]*selectors.Builder{}
		// Every other seed the fed Builder takes the namespaces from the
		// State, as a caller that gives no namespace events.
		namespaceEvents := seed%2 == 0
		versions := map[string]map[*selectors.SetVersion]selectors.AddrSet{}
		for _, node := range selectorstest.Nodes() {
			builders[node] = selectors.NewBuilder()
			versions[node] = map[*selectors.SetVersion]selectors.AddrSet{}
			fed[node] = selectors.NewBuilder()
			for _, p := range s.Pods {
				fed[node].SetPod(p)
			}
			for _, np := range s.Policies {
				fed[node].SetPolicy(np)
			}
			for _, ns := range s.Namespaces {
				if namespaceEvents {
					fed[node].SetNamespace(ns)
				}
			}
		}
		for step := 0; step < steps; step++ {
			for _, node := range selectorstest.Nodes() {
				want, wantProblems := selectors.BuildModel(node, s)
				got, gotProblems := builders[node].Build(node, s)
				checkVersions(t, versions[node], got)
				if got = withoutVersions(got); !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotProblems, wantProblems) {
					t.Fatalf("seed %d step %d node %s: the Builder's model differs from BuildModel's\ngot  %+v\nwant %+v", seed, step, node, got, want)
				}
				got, gotProblems = fed[node].BuildFromEvents(node, s)
				if got = withoutVersions(got); !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotProblems, wantProblems) {
					t.Fatalf("seed %d step %d node %s: the model built from pod events differs from BuildModel's\ngot  %+v\nwant %+v", seed, step, node, got, want)
				}
				if n, wantN := fed[node].LocalEndpoints(), countLocalEndpoints(s, node); n != wantN {
					t.Fatalf("seed %d step %d node %s: %d local endpoints, want %d", seed, step, node, n, wantN)
				}
				owners := selectors.AddressOwners(s.Pods)
				for _, p := range s.Pods {
					for _, ip := range p.IPs {
						o, ok := fed[node].Owner(ip)
						if wo, wok := owners[ip]; ok != wok || o != wo {
							t.Fatalf("seed %d step %d: owner of %s is %v, want %v", seed, step, ip, o, wo)
						}
					}
				}
			}
			var events []podEvent
			before := s
			s, events = changeOne(r, s, step)
			for _, node := range selectorstest.Nodes() {
				for _, ev := range events {
					if ev.set != nil {
						fed[node].SetPod(ev.set)
					} else {
						fed[node].DeletePod(ev.namespace, ev.name)
					}
				}
				feedPolicyEvents(fed[node], before.Policies, s.Policies)
				if namespaceEvents {
					feedNamespaceEvents(fed[node], before.Namespaces, s.Namespaces)
				}
			}
		}
	}
}

// checkVersions requires every versioned set of m to hold what the set
// of that version held when first seen (the compiler skips such sets
// by the pointer alone), and records the new versions.
func checkVersions(t *testing.T, seen map[*selectors.SetVersion]selectors.AddrSet, m *selectors.Model) {
	t.Helper()
	for _, set := range m.AddrSets {
		if set.Version == nil {
			continue
		}
		if first, ok := seen[set.Version]; ok {
			if !reflect.DeepEqual(first, set) {
				t.Fatalf("set %s keeps its version with other content:\nbefore %+v\nnow    %+v", set.ID, first, set)
			}
			continue
		}
		if set.Delta != nil {
			checkDelta(t, seen, set)
		}
		set.Addrs, set.Ranges = slices.Clone(set.Addrs), slices.Clone(set.Ranges)
		seen[set.Version] = set
	}
}

// checkDelta requires the Delta of a new version of a set to turn the
// content of the version it names, as first seen, into the set's
// content: what a compiler that applies deltas (nft.Compiler) relies on.
func checkDelta(t *testing.T, seen map[*selectors.SetVersion]selectors.AddrSet, set selectors.AddrSet) {
	t.Helper()
	from, ok := seen[set.Delta.From]
	if !ok {
		t.Fatalf("set %s: delta from a version never seen", set.ID)
	}
	if from.ID != set.ID || from.Description != set.Description || len(set.Ranges) > 0 {
		t.Fatalf("set %s: delta from set %s (%q), with ranges %v", set.ID, from.ID, from.Description, set.Ranges)
	}
	if len(set.Delta.Added)+len(set.Delta.Removed) == 0 {
		t.Fatalf("set %s: empty delta", set.ID)
	}
	content := map[netip.Addr]bool{}
	for _, a := range from.Addrs {
		content[a] = true
	}
	for i, a := range set.Delta.Removed {
		if !content[a] || i > 0 && !set.Delta.Removed[i-1].Less(a) {
			t.Fatalf("set %s: removed %v: not ascending or %s not in the old set", set.ID, set.Delta.Removed, a)
		}
		delete(content, a)
	}
	for i, a := range set.Delta.Added {
		if content[a] || i > 0 && !set.Delta.Added[i-1].Less(a) {
			t.Fatalf("set %s: added %v: not ascending or %s already in the set", set.ID, set.Delta.Added, a)
		}
		content[a] = true
	}
	if len(content) != len(set.Addrs) {
		t.Fatalf("set %s: the delta gives %d addresses, the set has %d", set.ID, len(content), len(set.Addrs))
	}
	for _, a := range set.Addrs {
		if !content[a] {
			t.Fatalf("set %s: %s is in the set, not in what the delta gives", set.ID, a)
		}
	}
}

// withoutVersions returns m with its sets' versions and deltas cleared,
// as BuildModel makes them.
func withoutVersions(m *selectors.Model) *selectors.Model {
	out := *m
	out.AddrSets = slices.Clone(m.AddrSets)
	for i := range out.AddrSets {
		out.AddrSets[i].Version, out.AddrSets[i].Delta = nil, nil
	}
	return &out
}

// countLocalEndpoints counts the pods of node that own an address.
func countLocalEndpoints(s *selectors.State, node string) int {
	owners := selectors.AddressOwners(s.Pods)
	n := 0
	for _, p := range s.Pods {
		if p.NodeName != node {
			continue
		}
		for _, ip := range p.IPs {
			if owners[ip] == p {
				n++
				break
			}
		}
	}
	return n
}

// podEvent is what the informer tells of one pod: its new object, or
// that it is gone.
type podEvent struct {
	set             *selectors.Pod
	namespace, name string
}

// randomNodes gives the nodes of a RandomCluster labels and addresses,
// for the nodes peers of ClusterNetworkPolicies.
func randomNodes(r *rand.Rand) []*selectors.Node {
	var out []*selectors.Node
	for i, name := range selectorstest.Nodes() {
		out = append(out, &selectors.Node{Name: name, Labels: map[string]string{"role": []string{"worker", "cp"}[r.Intn(2)]},
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 0, byte(100 + i)})}})
	}
	return out
}

// randomClusterPolicies draws one to three ClusterNetworkPolicies over
// the labels of a RandomCluster: both tiers, subjects by namespace or by
// pod, pods, namespaces, nodes and networks peers, numbered, ranged and
// named ports, every action.
func randomClusterPolicies(r *rand.Rand) []*cnpv1beta1.ClusterNetworkPolicy {
	pick := func(vs ...string) string { return vs[r.Intn(len(vs))] }
	sel := func(key string, values ...string) *metav1.LabelSelector {
		if r.Intn(4) == 0 {
			return &metav1.LabelSelector{}
		}
		return &metav1.LabelSelector{MatchLabels: map[string]string{key: pick(values...)}}
	}
	pods := func() *cnpv1beta1.NamespacedPod {
		return &cnpv1beta1.NamespacedPod{NamespaceSelector: *sel("env", "prod", "dev"), PodSelector: *sel("pod", "a", "b", "c")}
	}
	ports := func() []cnpv1beta1.ClusterNetworkPolicyProtocol {
		switch r.Intn(4) {
		case 0:
			return nil
		case 1:
			return []cnpv1beta1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1beta1.Port{Number: 80}}}}
		case 2:
			return []cnpv1beta1.ClusterNetworkPolicyProtocol{{UDP: &cnpv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnpv1beta1.Port{Range: &cnpv1beta1.PortRange{Start: 80, End: 90}}}}}
		}
		return []cnpv1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: pick("serve-80", "serve-81")}}
	}
	actions := []cnpv1beta1.ClusterNetworkPolicyRuleAction{"Accept", "Deny", "Pass"}
	var out []*cnpv1beta1.ClusterNetworkPolicy
	for i := 0; i < 1+r.Intn(3); i++ {
		c := &cnpv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cnp-%d", i), ResourceVersion: fmt.Sprint(r.Int())},
			Spec: cnpv1beta1.ClusterNetworkPolicySpec{Tier: []cnpv1beta1.Tier{cnpv1beta1.AdminTier, cnpv1beta1.BaselineTier}[r.Intn(2)], Priority: int32(r.Intn(3))}}
		if r.Intn(2) == 0 {
			c.Spec.Subject.Namespaces = sel("ns", "x", "y", "z")
		} else {
			c.Spec.Subject.Pods = pods()
		}
		for j := 0; j < r.Intn(3); j++ {
			rule := cnpv1beta1.ClusterNetworkPolicyIngressRule{Action: actions[r.Intn(3)], Protocols: ports()}
			if r.Intn(2) == 0 {
				rule.From = []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Pods: pods()}}
			} else {
				rule.From = []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: sel("ns", "x", "y", "z")}}
			}
			c.Spec.Ingress = append(c.Spec.Ingress, rule)
		}
		for j := 0; j < r.Intn(3); j++ {
			rule := cnpv1beta1.ClusterNetworkPolicyEgressRule{Action: actions[r.Intn(3)], Protocols: ports()}
			switch r.Intn(4) {
			case 0:
				rule.To = []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Nodes: sel("role", "worker", "cp")}}
			case 1:
				rule.To = []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"10.0.0.0/28"}}}
			case 2:
				rule.To = []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Namespaces: sel("env", "prod", "dev")}}
			default:
				rule.To = []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Pods: pods()}}
			}
			c.Spec.Egress = append(c.Spec.Egress, rule)
		}
		out = append(out, c)
	}
	return out
}

// feedPolicyEvents gives b the NetworkPolicy events an informer would
// deliver going from the policies before to after: an update or an add
// for each new object, a delete for each key gone.
func feedPolicyEvents(b *selectors.Builder, before, after []*networkingv1.NetworkPolicy) {
	feedEvents(before, after, func(np *networkingv1.NetworkPolicy) string { return np.Namespace + "/" + np.Name },
		b.SetPolicy, func(np *networkingv1.NetworkPolicy) { b.DeletePolicy(np.Namespace, np.Name) })
}

// feedNamespaceEvents gives b the namespace events that turn before into
// after: a namespace created, relabeled (a new object) or deleted.
func feedNamespaceEvents(b *selectors.Builder, before, after []*selectors.Namespace) {
	feedEvents(before, after, func(ns *selectors.Namespace) string { return ns.Name },
		b.SetNamespace, func(ns *selectors.Namespace) { b.DeleteNamespace(ns.Name) })
}

// feedEvents calls del for each object of before whose key after lacks,
// then set for each object of after that before does not hold.
func feedEvents[T comparable](before, after []T, key func(T) string, set, del func(T)) {
	now := map[string]bool{}
	for _, o := range after {
		now[key(o)] = true
	}
	for _, o := range before {
		if !now[key(o)] {
			del(o)
		}
	}
	for _, o := range after {
		if !slices.Contains(before, o) {
			set(o)
		}
	}
}

// changeOne returns s with one random change, sharing every object it does
// not change, and the pod events the change makes.
func changeOne(r *rand.Rand, s *selectors.State, step int) (*selectors.State, []podEvent) {
	out := &selectors.State{
		Pods:            slices.Clone(s.Pods),
		Namespaces:      slices.Clone(s.Namespaces),
		Policies:        slices.Clone(s.Policies),
		ClusterPolicies: slices.Clone(s.ClusterPolicies),
		Nodes:           slices.Clone(s.Nodes),
	}
	var events []podEvent
	changed := func(p *selectors.Pod) { events = append(events, podEvent{set: p}) }
	// The cache lists objects in no fixed order.
	r.Shuffle(len(out.Pods), func(i, j int) { out.Pods[i], out.Pods[j] = out.Pods[j], out.Pods[i] })
	copyPod := func(i int) *selectors.Pod {
		p := *out.Pods[i]
		p.Labels = maps.Clone(p.Labels)
		p.IPs = slices.Clone(p.IPs)
		out.Pods[i] = &p
		changed(&p)
		return &p
	}
	switch op := r.Intn(14); {
	case op == 0 || len(out.Pods) == 0: // a new pod, like another one
		var p selectors.Pod
		if len(out.Pods) > 0 {
			p = *out.Pods[r.Intn(len(out.Pods))]
		} else {
			p = selectors.Pod{Namespace: "x", NodeName: selectorstest.Nodes()[0]}
		}
		p.Name = fmt.Sprintf("new-%d", step)
		p.Labels = map[string]string{"pod": []string{"a", "b", "c"}[r.Intn(3)]}
		p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 1, byte(step)})}
		out.Pods = append(out.Pods, &p)
		changed(&p)
	case op == 1: // a pod deleted
		i := r.Intn(len(out.Pods))
		events = append(events, podEvent{namespace: out.Pods[i].Namespace, name: out.Pods[i].Name})
		out.Pods = slices.Delete(out.Pods, i, i+1)
	case op == 2: // relabeled
		p := copyPod(r.Intn(len(out.Pods)))
		if _, ok := p.Labels["tier"]; ok {
			delete(p.Labels, "tier")
		} else {
			p.Labels["tier"] = []string{"web", "db"}[r.Intn(2)]
		}
	case op == 3: // finished or back, or moved off the host network
		p := copyPod(r.Intn(len(out.Pods)))
		p.Terminal = !p.Terminal
		p.HostNetwork = false
	case op == 4: // another address
		p := copyPod(r.Intn(len(out.Pods)))
		p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 2, byte(step)})}
	case op == 5: // a namespace relabeled, created or deleted
		ns := []string{"x", "y", "z"}[r.Intn(3)]
		i := slices.IndexFunc(out.Namespaces, func(n *selectors.Namespace) bool { return n.Name == ns })
		switch {
		case i < 0:
			out.Namespaces = append(out.Namespaces, &selectors.Namespace{Name: ns, Labels: map[string]string{"ns": ns, "env": "prod"}})
		case r.Intn(3) == 0:
			out.Namespaces = slices.Delete(out.Namespaces, i, i+1)
		default:
			l := maps.Clone(out.Namespaces[i].Labels)
			// One time in four a new object with the same labels (a
			// resync, an annotation changed).
			switch {
			case r.Intn(4) == 0:
			case l["env"] == "prod":
				l["env"] = "dev"
			default:
				l["env"] = "prod"
			}
			out.Namespaces[i] = &selectors.Namespace{Name: ns, Labels: l}
		}
	case op == 6: // other policies
		out.Policies = selectorstest.RandomCluster(selectorstest.RandomChoices(r, 1024)).Policies
	case op == 12 && len(out.Policies) > 0: // one policy updated, deleted, or copied to another namespace
		i := r.Intn(len(out.Policies))
		np := out.Policies[i].DeepCopy()
		switch r.Intn(3) {
		case 0:
			np.ResourceVersion += "1"
			np.Spec.PodSelector = metav1.LabelSelector{MatchLabels: map[string]string{"pod": []string{"a", "b", "c"}[r.Intn(3)]}}
			out.Policies[i] = np
		case 1:
			out.Policies = slices.Delete(out.Policies, i, i+1)
		default:
			np.Namespace = []string{"x", "y", "z"}[r.Intn(3)]
			np.Name = fmt.Sprintf("moved-%d", step)
			out.Policies = append(out.Policies, np)
		}
	case op == 7: // a pod claims the address of another (a stale object during reuse)
		from := out.Pods[r.Intn(len(out.Pods))]
		p := copyPod(r.Intn(len(out.Pods)))
		p.IPs = slices.Clone(from.IPs)
		p.Created = from.Created.Add(time.Duration(r.Intn(3)-1) * time.Minute)
	case op == 8: // other ClusterNetworkPolicies, or the CRD gone
		out.ClusterPolicies = nil
		if r.Intn(4) != 0 {
			out.ClusterPolicies = randomClusterPolicies(r)
		}
	case op == 9 && len(out.ClusterPolicies) > 0: // one ClusterNetworkPolicy deleted
		i := r.Intn(len(out.ClusterPolicies))
		out.ClusterPolicies = slices.Delete(out.ClusterPolicies, i, i+1)
	case op == 10: // a node relabeled
		i := r.Intn(len(out.Nodes))
		n := *out.Nodes[i]
		n.Labels = map[string]string{"role": []string{"worker", "cp"}[r.Intn(2)]}
		out.Nodes[i] = &n
	case op == 11: // a pod moved to the other node (a new pod of the same name)
		p := copyPod(r.Intn(len(out.Pods)))
		if p.NodeName == selectorstest.Nodes()[0] {
			p.NodeName = selectorstest.Nodes()[1]
		} else {
			p.NodeName = selectorstest.Nodes()[0]
		}
	default: // nothing changed: a sync for another reason
	}
	return out, events
}
