package selectors

import (
	"reflect"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

func cnp(name string, tier cnpv1beta1.Tier, prio int32, subject cnpv1beta1.ClusterNetworkPolicySubject) *cnpv1beta1.ClusterNetworkPolicy {
	return &cnpv1beta1.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       cnpv1beta1.ClusterNetworkPolicySpec{Tier: tier, Priority: prio, Subject: subject},
	}
}

func nsSubject(l map[string]string) cnpv1beta1.ClusterNetworkPolicySubject {
	return cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{MatchLabels: l}}
}

func tcp(n int32) cnpv1beta1.ClusterNetworkPolicyProtocol {
	return cnpv1beta1.ClusterNetworkPolicyProtocol{TCP: &cnpv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1beta1.Port{Number: n}}}
}

func cnpState(cnps ...*cnpv1beta1.ClusterNetworkPolicy) *State {
	return &State{
		Namespaces: []*Namespace{{Name: "a", Labels: map[string]string{"team": "a"}}, {Name: "b", Labels: map[string]string{"team": "b"}}},
		Pods: []*Pod{
			{Namespace: "a", Name: "web", NodeName: "n", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.0.1", "fd00::1"),
				Ports: []NamedPort{{Name: "http", Protocol: ProtocolTCP, Port: 8080}, {Name: "dns", Protocol: ProtocolUDP, Port: 53}}},
			{Namespace: "a", Name: "db", NodeName: "n", Labels: map[string]string{"app": "db"}, IPs: addrs("10.0.0.2")},
			{Namespace: "b", Name: "cli", NodeName: "m", Labels: map[string]string{"app": "cli"}, IPs: addrs("10.0.1.1"),
				Ports: []NamedPort{{Name: "http", Protocol: ProtocolTCP, Port: 9090}}},
			{Namespace: "b", Name: "host", NodeName: "n", HostNetwork: true, IPs: addrs("192.168.0.1")},
		},
		Nodes: []*Node{
			{Name: "n", Labels: map[string]string{"role": "worker"}, IPs: addrs("192.168.0.1")},
			{Name: "m", Labels: map[string]string{"role": "cp"}, IPs: addrs("192.168.0.2", "fd01::2")},
		},
		ClusterPolicies: cnps,
	}
}

// TestClusterPolicyModel checks every subject, peer and protocol kind,
// tier ordering (priority then name) and set sharing with NetworkPolicy
// peers.
func TestClusterPolicyModel(t *testing.T) {
	deny := cnp("deny-b", cnpv1beta1.AdminTier, 10, nsSubject(map[string]string{"team": "a"}))
	deny.Spec.Ingress = []cnpv1beta1.ClusterNetworkPolicyIngressRule{
		{Name: "from-b", Action: "Deny", From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}}}},
		{Action: "Pass", From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1beta1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "cli"}}}}},
			Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{tcp(80), {UDP: &cnpv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnpv1beta1.Port{Range: &cnpv1beta1.PortRange{Start: 1000, End: 2000}}}}, {DestinationNamedPort: "http"}}},
	}
	// Same priority, earlier name: evaluated first.
	tie := cnp("allow-nodes", cnpv1beta1.AdminTier, 10, cnpv1beta1.ClusterNetworkPolicySubject{Pods: &cnpv1beta1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}}}})
	tie.Spec.Egress = []cnpv1beta1.ClusterNetworkPolicyEgressRule{
		{Action: "Accept", To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Nodes: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "cp"}}}}},
		{Action: "Accept", To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"10.1.0.0/16", "10.0.0.0/8"}}, {Networks: []cnpv1beta1.CIDR{"172.16.0.0/12"}}}},
		{Action: "Accept", To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnpv1beta1.DomainName{"example.com"}}}},
		{Action: "Deny", To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Namespaces: &metav1.LabelSelector{}}}, Protocols: []cnpv1beta1.ClusterNetworkPolicyProtocol{{DestinationNamedPort: "http"}}},
	}
	base := cnp("default-deny", cnpv1beta1.BaselineTier, 5, nsSubject(nil))
	base.Spec.Ingress = []cnpv1beta1.ClusterNetworkPolicyIngressRule{{Action: "Deny", From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: &metav1.LabelSelector{}}}}}
	// An ipBlock NetworkPolicy peer with the same CIDR shares the set.
	np := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: "np"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": "b"}}}}}}}}

	s := cnpState(deny, tie, base)
	s.Policies = []*networkingv1.NetworkPolicy{np}
	m, problems := BuildModel("n", s)

	pods := map[string]PodRules{}
	for _, p := range m.Pods {
		pods[p.Key] = p
	}
	if len(pods) != 2 {
		t.Fatalf("pods = %v, want a/web and a/db (the host-network pod is no subject)", m.Pods)
	}
	web := pods["a/web"]
	if want := (ClusterTiers{Admin: []string{"deny-b"}, Baseline: []string{"default-deny"}}); !reflect.DeepEqual(web.Cluster[Ingress], want) {
		t.Errorf("web ingress tiers = %+v, want %+v", web.Cluster[Ingress], want)
	}
	if want := (ClusterTiers{Admin: []string{"allow-nodes"}}); !reflect.DeepEqual(web.Cluster[Egress], want) {
		t.Errorf("web egress tiers = %+v, want %+v", web.Cluster[Egress], want)
	}
	if web.Ingress != nil || web.Egress != nil {
		t.Errorf("web is isolated by no NetworkPolicy, got %v %v", web.Ingress, web.Egress)
	}
	if db := pods["a/db"]; !reflect.DeepEqual(db.Ingress, []string{"a/np"}) || db.Cluster[Egress].Empty() == false {
		t.Errorf("db = %+v", db)
	}

	cps := map[string]ClusterPolicyRules{}
	for _, cp := range m.ClusterPolicies {
		cps[cp.Name] = cp
	}
	d := cps["deny-b"]
	if len(d.Ingress) != 2 || d.Ingress[0].Action != ActionDeny || d.Ingress[0].Name != "from-b" || d.Ingress[1].Action != ActionPass || d.Ingress[1].Index != 1 {
		t.Fatalf("deny-b ingress = %+v", d.Ingress)
	}
	// Shared with the NetworkPolicy peer namespaceSelector team=b.
	if !reflect.DeepEqual(d.Ingress[0].Peers.Sets, []string{"nsel=team=b|pod=*"}) || !reflect.DeepEqual(m.Policies[0].Ingress[0].Peers.Sets, d.Ingress[0].Peers.Sets) {
		t.Errorf("peer sets = %v and %v, want one shared", d.Ingress[0].Peers.Sets, m.Policies[0].Ingress[0].Peers.Sets)
	}
	wantRanges := []PortRange{{ProtocolTCP, 80, 80}, {ProtocolUDP, 1000, 2000}}
	if got := d.Ingress[1].Ports; !reflect.DeepEqual(got.Ranges, wantRanges) || got.Named == "" {
		t.Errorf("ports = %+v", got)
	}
	e := cps["allow-nodes"].Egress
	if len(e) != 3 {
		t.Fatalf("allow-nodes egress = %+v, want 3 rules (domainNames matches nothing)", e)
	}
	sets := map[string]AddrSet{}
	for _, set := range m.AddrSets {
		sets[set.ID] = set
	}
	if got := sets[e[0].Peers.Sets[0]]; !reflect.DeepEqual(got.Addrs, addrs("192.168.0.2", "fd01::2")) {
		t.Errorf("nodes set = %+v", got)
	}
	if !reflect.DeepEqual(e[1].Peers.Sets, []string{"cidr=172.16.0.0/12", "cidrs=10.0.0.0/8,10.1.0.0/16"}) {
		t.Errorf("networks sets = %v", e[1].Peers.Sets)
	}
	if got := sets["cidrs=10.0.0.0/8,10.1.0.0/16"].Ranges; len(got) != 1 || got[0].Last.String() != "10.255.255.255" {
		t.Errorf("union of networks = %v", got)
	}
	ports := map[string]PortSet{}
	for _, ps := range m.PortSets {
		ports[ps.ID] = ps
	}
	// Egress named port on every peer pod (any protocol); ingress on the subject's local pods.
	if got := ports[e[2].Ports.Named].Entries; len(got) != 3 {
		t.Errorf("egress named port entries = %v, want web v4+v6 and cli", got)
	}
	if got := ports[d.Ingress[1].Ports.Named].Entries; len(got) != 2 || got[0].Port != 8080 {
		t.Errorf("ingress named port entries = %v", got)
	}
	var reasons []string
	for _, p := range problems {
		if p.Cluster {
			reasons = append(reasons, p.Policy+": "+p.Reason)
		}
	}
	if len(reasons) != 1 || !strings.Contains(reasons[0], "allow-nodes: egress rule 2: domainNames are not supported") {
		t.Errorf("problems = %q", reasons)
	}
}

// TestClusterPolicyParseProblems feeds bad input field by field: each is
// reported, none panics, and the rest of the policy stays.
func TestClusterPolicyParseProblems(t *testing.T) {
	peer := cnpv1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: &metav1.LabelSelector{}}
	badSel := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: "Bogus"}}}
	tests := []struct {
		name      string
		mutate    func(*cnpv1beta1.ClusterNetworkPolicy)
		want      string
		wantRules int    // egress rules kept
		wantFirst Action // action of the first kept rule
	}{
		{"valid", func(*cnpv1beta1.ClusterNetworkPolicy) {}, "", 1, ActionAccept},
		{"unknown tier", func(c *cnpv1beta1.ClusterNetworkPolicy) { c.Spec.Tier = "Gold" }, "tier \"Gold\" is unknown", 0, 0},
		{"priority out of range", func(c *cnpv1beta1.ClusterNetworkPolicy) { c.Spec.Priority = 1001 }, "outside 0-1000", 0, 0},
		{"no subject", func(c *cnpv1beta1.ClusterNetworkPolicy) { c.Spec.Subject = cnpv1beta1.ClusterNetworkPolicySubject{} }, "neither namespaces nor pods", 0, 0},
		{"two subjects", func(c *cnpv1beta1.ClusterNetworkPolicy) { c.Spec.Subject.Pods = &cnpv1beta1.NamespacedPod{} }, "both namespaces and pods", 0, 0},
		{"bad subject selector", func(c *cnpv1beta1.ClusterNetworkPolicy) { c.Spec.Subject.Namespaces = badSel }, "subject namespaces selector is invalid", 0, 0},
		{"unknown action", func(c *cnpv1beta1.ClusterNetworkPolicy) { c.Spec.Egress[0].Action = "Maybe" }, "action \"Maybe\" is unknown, the rule denies everything", 1, ActionDeny},
		{"no peers", func(c *cnpv1beta1.ClusterNetworkPolicy) { c.Spec.Egress[0].To = nil }, "has no peer", 0, 0},
		{"empty peer on accept", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].To = append(c.Spec.Egress[0].To, cnpv1beta1.ClusterNetworkPolicyEgressPeer{})
		}, "sets no field this agent knows, the Accept rule matches nothing", 0, 0},
		{"empty peer on pass", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].Action = "Pass"
			c.Spec.Egress[0].To = []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{}}
		}, "the Pass rule denies everything", 1, ActionDeny},
		{"two peer fields", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].To[0].Networks = []cnpv1beta1.CIDR{"10.0.0.0/8"}
		}, "more than one field", 0, 0},
		{"bad network", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].To = []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Networks: []cnpv1beta1.CIDR{"10.0.0.300/8"}}}
		}, "does not parse", 0, 0},
		{"bad nodes selector", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].To = []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Nodes: badSel}}
		}, "nodes selector is invalid", 0, 0},
		{"bad pods selector", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].To = []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Pods: &cnpv1beta1.NamespacedPod{PodSelector: *badSel}}}
		}, "pods podSelector is invalid", 0, 0},
		{"domain names", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].To = append(c.Spec.Egress[0].To, cnpv1beta1.ClusterNetworkPolicyEgressPeer{DomainNames: []cnpv1beta1.DomainName{"a.example"}})
		}, "domainNames are not supported", 1, ActionAccept},
		{"empty protocol", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].Protocols = []cnpv1beta1.ClusterNetworkPolicyProtocol{{}}
		}, "exactly one of tcp", 0, 0},
		{"bad port range", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].Protocols = []cnpv1beta1.ClusterNetworkPolicyProtocol{{TCP: &cnpv1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &cnpv1beta1.Port{Range: &cnpv1beta1.PortRange{Start: 90, End: 80}}}}}
		}, "port range 90-80 is invalid", 0, 0},
		{"port zero", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].Protocols = []cnpv1beta1.ClusterNetworkPolicyProtocol{tcp(0)}
		}, "port range 0-0", 0, 0},
		{"number and range", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Egress[0].Protocols = []cnpv1beta1.ClusterNetworkPolicyProtocol{{UDP: &cnpv1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &cnpv1beta1.Port{Number: 5, Range: &cnpv1beta1.PortRange{Start: 1, End: 9}}}}}
		}, "both number and range", 0, 0},
		{"nodes peer in ingress", func(c *cnpv1beta1.ClusterNetworkPolicy) {
			c.Spec.Ingress = []cnpv1beta1.ClusterNetworkPolicyIngressRule{{Action: "Deny", From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{}}}}
		}, "ingress rule 0: a peer sets no field", 1, ActionAccept},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := cnp("p", cnpv1beta1.AdminTier, 1, nsSubject(nil))
			c.Spec.Egress = []cnpv1beta1.ClusterNetworkPolicyEgressRule{{Action: "Accept", To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{peer}}}
			tt.mutate(c)
			problems := strings.Join(ParseClusterPolicyProblems(c), "; ")
			if (tt.want == "") != (problems == "") || !strings.Contains(problems, tt.want) {
				t.Errorf("problems = %q, want one containing %q", problems, tt.want)
			}
			parsed := parseClusterPolicy(c)
			if got := len(parsed.rules[Egress]); got != tt.wantRules {
				t.Fatalf("egress rules kept = %d, want %d", got, tt.wantRules)
			}
			if tt.wantRules > 0 && parsed.rules[Egress][0].action != tt.wantFirst {
				t.Errorf("first action = %v, want %v", parsed.rules[Egress][0].action, tt.wantFirst)
			}
			// The model builds whatever the input.
			BuildModel("n", cnpState(c))
		})
	}
}

// TestClusterPolicyBuilderReuse: the Builder gives what BuildModel gives
// across a change of a CNP and of a pod's labels.
func TestClusterPolicyBuilderReuse(t *testing.T) {
	c := cnp("p", cnpv1beta1.AdminTier, 1, nsSubject(map[string]string{"team": "a"}))
	c.Spec.Ingress = []cnpv1beta1.ClusterNetworkPolicyIngressRule{{Action: "Deny", From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1beta1.NamespacedPod{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "cli"}}}}}}}
	bl := NewBuilder()
	s := cnpState(c)
	for step := 0; step < 3; step++ {
		got, _ := bl.Build("n", s)
		want, _ := BuildModel("n", s)
		for i := range got.AddrSets {
			got.AddrSets[i].Version, got.AddrSets[i].Delta = nil, nil // BuildModel's sets have none
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("step %d: builder %+v, BuildModel %+v", step, got, want)
		}
		s = cnpState(c)
		if step == 0 {
			c2 := c.DeepCopy()
			c2.ResourceVersion = "2"
			c2.Spec.Ingress[0].Action = "Accept"
			s.ClusterPolicies[0] = c2
		}
		if step == 1 {
			s.Pods[2].Labels = map[string]string{"app": "other"}
		}
	}
}

// TestSharedPortSetProblemReachesEveryPolicy: two NetworkPolicies that
// share a named-port set both hear that the name resolves nowhere, not
// only the one that built the set.
func TestSharedPortSetProblemReachesEveryPolicy(t *testing.T) {
	named := intstr.FromString("nope")
	mk := func(name string) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "a", Name: name},
			Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &named}}}}}}
	}
	s := cnpState()
	s.Policies = []*networkingv1.NetworkPolicy{mk("p1"), mk("p2")}
	_, problems := BuildModel("n", s)
	got := map[string]bool{}
	for _, p := range problems {
		if strings.Contains(p.Reason, "TCP/nope") {
			got[p.Policy] = true
		}
	}
	if !got["a/p1"] || !got["a/p2"] {
		t.Errorf("policies told of the unresolved name: %v, want a/p1 and a/p2", got)
	}
}
