package selectors

import (
	"fmt"
	"math/rand"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestSharedAddressOwner: when two pods claim one address, the model uses
// only the owner's labels and named ports for it (verdict-map elements,
// peer sets, named-port sets), whatever order the pods come in.
func TestSharedAddressOwner(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	shared := netip.MustParseAddr("10.0.0.9")
	claimant := func(name string, created time.Time, port uint16) *Pod {
		return &Pod{Namespace: "x", Name: name, NodeName: "n", Labels: map[string]string{"role": name}, IPs: []netip.Addr{shared},
			Created: created, Ports: []NamedPort{{Name: "http", Protocol: ProtocolTCP, Port: port}}}
	}
	http := intstr.FromString("http")
	policies := []*networkingv1.NetworkPolicy{
		// Isolates a and b for ingress: their addresses get verdict-map elements.
		{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "iso"}, Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "role", Operator: metav1.LabelSelectorOpIn, Values: []string{"a", "b"}}}}}},
		// The server lets in role=a only, and sends to named port http only.
		{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "server"}, Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "a"}}}}}},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &http}}}},
		}},
	}
	tests := []struct {
		name      string
		a, b      func(*Pod)
		wantOwner string // "" when neither owns it
		// notIsolated: the owner is in a namespace no policy isolates, so
		// the address has no verdict-map element.
		notIsolated bool
	}{
		{"the newer wins", func(p *Pod) { p.Created = t0.Add(time.Minute) }, nil, "x/a", false},
		{"the newer wins, other way", nil, func(p *Pod) { p.Created = t0.Add(time.Minute) }, "x/b", false},
		{"equal times: namespace then name", nil, nil, "x/a", false},
		{"equal times: namespace first", nil, func(p *Pod) { p.Namespace = "w" }, "w/b", true},
		{"a finished pod never owns", func(p *Pod) { p.Created, p.Terminal = t0.Add(time.Minute), true }, nil, "x/b", false},
		{"a host-network pod never owns", func(p *Pod) { p.Created, p.HostNetwork = t0.Add(time.Minute), true }, nil, "x/b", false},
		{"neither is an endpoint", func(p *Pod) { p.Terminal = true }, func(p *Pod) { p.HostNetwork = true }, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := claimant("a", t0, 80), claimant("b", t0, 81)
			for _, change := range []struct {
				f func(*Pod)
				p *Pod
			}{{tt.a, a}, {tt.b, b}} {
				if change.f != nil {
					change.f(change.p)
				}
			}
			server := &Pod{Namespace: "x", Name: "server", NodeName: "n", Labels: map[string]string{"role": "server"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}
			var first *Model
			for _, order := range [][]*Pod{{a, b, server}, {server, b, a}} {
				m, _ := BuildModel("n", &State{Pods: order, Policies: policies})
				if first == nil {
					first = m
				} else if !reflect.DeepEqual(m, first) {
					t.Fatalf("the model depends on the order of the pods:\n%+v\n%+v", first, m)
				}
			}
			var owners []string
			for _, pr := range first.Pods {
				if slices.Contains(pr.IPs, shared) {
					owners = append(owners, pr.Key)
				}
			}
			var wantOwners []string
			if tt.wantOwner != "" && !tt.notIsolated {
				wantOwners = []string{tt.wantOwner}
			}
			if !reflect.DeepEqual(owners, wantOwners) {
				t.Errorf("verdict-map elements of %s belong to %v, want %v", shared, owners, wantOwners)
			}
			inPeerSet, ports := false, []uint16(nil)
			for _, s := range first.AddrSets {
				inPeerSet = inPeerSet || slices.Contains(s.Addrs, shared)
			}
			for _, s := range first.PortSets {
				for _, e := range s.Entries {
					if e.Addr == shared {
						ports = append(ports, e.Port)
					}
				}
			}
			wantInPeerSet, wantPorts := tt.wantOwner == "x/a", map[string][]uint16{"x/a": {80}, "x/b": {81}, "w/b": {81}}[tt.wantOwner]
			if inPeerSet != wantInPeerSet {
				t.Errorf("%s in the peer set of role=a: %v, want %v", shared, inPeerSet, wantInPeerSet)
			}
			if !reflect.DeepEqual(ports, wantPorts) {
				t.Errorf("named port http of %s resolves to %v, want %v", shared, ports, wantPorts)
			}
		})
	}
}

// TestSharedSetsDoNotDependOnPolicyOrder: two policies share a peer set
// and an egress named-port set; deleting the one seen first leaves every
// surviving set's ID, description and content as they were.
func TestSharedSetsDoNotDependOnPolicyOrder(t *testing.T) {
	http := intstr.FromString("http")
	spec := networkingv1.NetworkPolicySpec{
		PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
		PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		Egress: []networkingv1.NetworkPolicyEgressRule{{
			To:    []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}}},
			Ports: []networkingv1.NetworkPolicyPort{{Port: &http}},
		}},
	}
	first := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a-first"}, Spec: spec}
	second := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b-second"}, Spec: *spec.DeepCopy()}
	pods := []*Pod{
		{Namespace: "x", Name: "web", NodeName: "n", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.0.1")},
		{Namespace: "x", Name: "db", NodeName: "m", Labels: map[string]string{"app": "db"}, IPs: addrs("10.0.0.2"), Ports: []NamedPort{{Name: "http", Protocol: ProtocolTCP, Port: 5432}}},
	}
	both, _ := BuildModel("n", &State{Pods: pods, Policies: []*networkingv1.NetworkPolicy{first, second}})
	after, _ := BuildModel("n", &State{Pods: pods, Policies: []*networkingv1.NetworkPolicy{second}})
	if len(both.PortSets) != 1 || len(both.AddrSets) != 1 {
		t.Fatalf("the two policies should share one port set and one peer set: %+v %+v", both.PortSets, both.AddrSets)
	}
	if !reflect.DeepEqual(after.AddrSets, both.AddrSets) {
		t.Errorf("peer sets changed when the first policy went:\nbefore %+v\nafter  %+v", both.AddrSets, after.AddrSets)
	}
	if !reflect.DeepEqual(after.PortSets, both.PortSets) {
		t.Errorf("port sets changed when the first policy went:\nbefore %+v\nafter  %+v", both.PortSets, after.PortSets)
	}
}

// TestContestedOwnersAgreeWithAddressOwners: the bucketed search for
// contested addresses finds exactly the addresses claimed more than once,
// each with the owner the plain map gives, on crowded random claims.
func TestContestedOwnersAgreeWithAddressOwners(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for round := 0; round < 200; round++ {
		var pods []*Pod
		for i := 0; i < 1+r.Intn(300); i++ {
			p := &Pod{Namespace: []string{"x", "y"}[r.Intn(2)], Name: fmt.Sprintf("p%d", r.Intn(50)), Created: t0.Add(time.Duration(r.Intn(3)) * time.Second),
				Terminal: r.Intn(10) == 0}
			for j := 0; j < 1+r.Intn(2); j++ {
				n := r.Intn(1 + len(pods)) // crowded: collisions are common
				if r.Intn(2) == 0 {
					p.IPs = append(p.IPs, netip.AddrFrom4([4]byte{10, 0, byte(n >> 8), byte(n)}))
				} else {
					p.IPs = append(p.IPs, netip.AddrFrom16([16]byte{0xfd, 15: byte(n)}))
				}
			}
			pods = append(pods, p, nil)
		}
		claims := map[netip.Addr]int{}
		for _, p := range pods {
			if p != nil && p.IsEndpoint() {
				for _, ip := range p.IPs {
					claims[ip]++
				}
			}
		}
		owners, contested := AddressOwners(pods), contestedOwners(pods)
		for ip, n := range claims {
			o, ok := contested[ip]
			if ok != (n > 1) || (ok && o != owners[ip]) {
				t.Fatalf("round %d, %s claimed %d times: contested owner %v (found %v), owner %v", round, ip, n, o, ok, owners[ip])
			}
		}
		if len(contested) > len(claims) {
			t.Fatalf("round %d: contested lists addresses nobody claims", round)
		}
	}
}
