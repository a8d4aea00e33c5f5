package selectors

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func ipBlockPolicy(cidr string, except ...string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "blk"},
		Spec: networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}}}},
		},
	}
}

func TestIPBlockRanges(t *testing.T) {
	tests := []struct {
		name        string
		cidr        string
		except      []string
		want        []string // "first-last"
		wantProblem string
	}{
		{"plain", "10.0.0.0/24", nil, []string{"10.0.0.0-10.0.0.255"}, ""},
		{"non canonical cidr", "10.0.0.7/24", nil, []string{"10.0.0.0-10.0.0.255"}, ""},
		{"except in the middle", "10.0.0.0/24", []string{"10.0.0.16/28"}, []string{"10.0.0.0-10.0.0.15", "10.0.0.32-10.0.0.255"}, ""},
		{"except equal to cidr", "10.0.0.0/24", []string{"10.0.0.0/24"}, nil, ""},
		{"overlapping excepts", "10.0.0.0/24", []string{"10.0.0.0/25", "10.0.0.64/26"}, []string{"10.0.0.128-10.0.0.255"}, ""},
		{"all v4", "0.0.0.0/0", []string{"255.255.255.255/32"}, []string{"0.0.0.0-255.255.255.254"}, ""},
		{"all v6 minus one", "::/0", []string{"::/128"}, []string{"::1-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"}, ""},
		{"except outside", "10.0.0.0/24", []string{"192.168.0.0/24"}, []string{"10.0.0.0-10.0.0.255"}, "not inside"},
		{"except other family", "10.0.0.0/24", []string{"fd00::/64"}, []string{"10.0.0.0-10.0.0.255"}, "not inside"},
		{"bad cidr", "10.0.0.300/24", nil, nil, "does not parse"},
		{"mapped v6", "::ffff:10.0.0.0/120", nil, []string{"::ffff:10.0.0.0-::ffff:10.0.0.255"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &State{
				Pods:     []*Pod{{Namespace: "x", Name: "a", NodeName: "n", IPs: addrs("10.0.0.1")}},
				Policies: []*networkingv1.NetworkPolicy{ipBlockPolicy(tt.cidr, tt.except...)},
			}
			m, problems := BuildModel("n", s)
			var got []string
			for _, set := range m.AddrSets {
				for _, r := range set.Ranges {
					got = append(got, r.First.String()+"-"+r.Last.String())
				}
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ranges = %v, want %v", got, tt.want)
			}
			gotProblem := ""
			for _, p := range problems {
				gotProblem += p.Reason
			}
			if (tt.wantProblem == "") != (gotProblem == "") || !strings.Contains(gotProblem, tt.wantProblem) {
				t.Errorf("problems = %q, want one containing %q", gotProblem, tt.wantProblem)
			}
		})
	}
}

func TestBuildModelIsolationAndEndpoints(t *testing.T) {
	pods := []*Pod{
		{Namespace: "x", Name: "a", NodeName: "n1", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.0.1", "fd00::1")},
		{Namespace: "x", Name: "host", NodeName: "n1", Labels: map[string]string{"app": "web"}, IPs: addrs("192.0.2.1"), HostNetwork: true},
		{Namespace: "x", Name: "done", NodeName: "n1", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.0.9"), Terminal: true},
		{Namespace: "x", Name: "pending", NodeName: "n1", Labels: map[string]string{"app": "web"}},
		{Namespace: "x", Name: "remote", NodeName: "n2", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.1.1")},
		{Namespace: "y", Name: "client", NodeName: "n2", Labels: map[string]string{"role": "client"}, IPs: addrs("10.0.1.2")},
	}
	egressOnly := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "eg"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Egress:      []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{metadataNameLabel: "y"}}}}}},
		},
	}
	m, problems := BuildModel("n1", &State{Pods: pods, Policies: []*networkingv1.NetworkPolicy{egressOnly}})
	if len(problems) != 0 {
		t.Fatalf("unexpected problems: %v", problems)
	}
	// policyTypes omitted with egress rules: Ingress and Egress.
	want := []PodRules{{Key: "x/a", IPs: addrs("10.0.0.1", "fd00::1"), Ingress: []string{"x/eg"}, Egress: []string{"x/eg"}}}
	if !reflect.DeepEqual(m.Pods, want) {
		t.Fatalf("pods = %+v, want %+v", m.Pods, want)
	}
	if len(m.AddrSets) != 1 || !reflect.DeepEqual(m.AddrSets[0].Addrs, addrs("10.0.1.2")) {
		t.Fatalf("namespace y (known only from its pods) should resolve by its name label: %+v", m.AddrSets)
	}
	// Deterministic.
	m2, _ := BuildModel("n1", &State{Pods: pods, Policies: []*networkingv1.NetworkPolicy{egressOnly}})
	if !reflect.DeepEqual(m, m2) {
		t.Fatal("two builds of the same state differ")
	}
}

func TestNamedPortsResolvePerPod(t *testing.T) {
	http := intstr.FromString("http")
	pods := []*Pod{
		{Namespace: "x", Name: "a", NodeName: "n", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.0.1"), Ports: []NamedPort{{Name: "http", Protocol: ProtocolTCP, Port: 8080}}},
		{Namespace: "x", Name: "b", NodeName: "n", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.0.2"), Ports: []NamedPort{{Name: "http", Protocol: ProtocolTCP, Port: 9090}}},
		{Namespace: "x", Name: "c", NodeName: "n", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.0.3")},
	}
	pol := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "named"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Port: &http}}}},
		},
	}
	m, problems := BuildModel("n", &State{Pods: pods, Policies: []*networkingv1.NetworkPolicy{pol}})
	if len(problems) != 0 {
		t.Fatalf("unexpected problems: %v", problems)
	}
	want := []PortEntry{{addrs("10.0.0.1")[0], ProtocolTCP, 8080}, {addrs("10.0.0.2")[0], ProtocolTCP, 9090}}
	if len(m.PortSets) != 1 || !reflect.DeepEqual(m.PortSets[0].Entries, want) {
		t.Fatalf("port sets = %+v, want entries %+v", m.PortSets, want)
	}

	udp := corev1.ProtocolUDP
	pol.Spec.Ingress[0].Ports[0].Protocol = &udp
	_, problems = BuildModel("n", &State{Pods: pods, Policies: []*networkingv1.NetworkPolicy{pol}})
	if len(problems) != 1 || !strings.Contains(problems[0].Reason, "UDP/http") {
		t.Fatalf("a named port of the wrong protocol should be reported once, got %v", problems)
	}
}

func TestInvalidInputNeverStopsOtherPolicies(t *testing.T) {
	pods := []*Pod{{Namespace: "x", Name: "a", NodeName: "n", Labels: map[string]string{"app": "web"}, IPs: addrs("10.0.0.1")}}
	bad := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "bad"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}},
		},
	}
	badPeer := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "bad-peer"},
		Spec: networkingv1.NetworkPolicySpec{
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: metav1.LabelSelectorOpIn}}}},
				{},
			}}},
		},
	}
	m, problems := BuildModel("n", &State{Pods: pods, Policies: []*networkingv1.NetworkPolicy{bad, badPeer, nil}})
	if len(m.Pods) != 1 || !reflect.DeepEqual(m.Pods[0].Ingress, []string{"x/bad-peer"}) {
		t.Fatalf("pods = %+v", m.Pods)
	}
	if len(m.Policies) != 1 || len(m.Policies[0].Ingress) != 0 {
		t.Fatalf("the invalid peers must match nothing: %+v", m.Policies)
	}
	if len(problems) < 2 {
		t.Fatalf("expected the invalid peers to be reported, got %v", problems)
	}
}

func TestPodFromObject(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	p := PodFromObject(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a"},
		Spec: corev1.PodSpec{
			Containers:     []corev1.Container{{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}, {ContainerPort: 81}}}},
			InitContainers: []corev1.Container{{RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "side", ContainerPort: 90, Protocol: corev1.ProtocolUDP}}}, {Ports: []corev1.ContainerPort{{Name: "gone", ContainerPort: 91}}}},
		},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "::ffff:10.0.0.1"}, {IP: "garbage"}, {IP: "fd00::1"}}},
	})
	if !reflect.DeepEqual(p.IPs, addrs("10.0.0.1", "fd00::1")) {
		t.Errorf("IPs = %v", p.IPs)
	}
	wantPorts := []NamedPort{{"http", ProtocolTCP, 80}, {"side", ProtocolUDP, 90}}
	if !reflect.DeepEqual(p.Ports, wantPorts) {
		t.Errorf("ports = %v, want %v", p.Ports, wantPorts)
	}
}
