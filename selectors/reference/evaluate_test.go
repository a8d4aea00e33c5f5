package reference

import (
	"net/netip"
	"reflect"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func pod(ns, name, node string, created time.Time, labels map[string]string, ips ...string) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels, CreationTimestamp: metav1.NewTime(created)},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c"}}},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	return p
}

func withPort(p *corev1.Pod, name string, proto corev1.Protocol, n int32) *corev1.Pod {
	p.Spec.Containers[0].Ports = append(p.Spec.Containers[0].Ports, corev1.ContainerPort{Name: name, Protocol: proto, ContainerPort: n})
	return p
}

func policy(ns, name string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

func sel(k, v string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchLabels: map[string]string{k: v}}
}

func ingressFrom(target *metav1.LabelSelector, peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicySpec {
	return networkingv1.NetworkPolicySpec{PodSelector: *target, Ingress: []networkingv1.NetworkPolicyIngressRule{{From: peers, Ports: ports}}}
}

func tcpPort(p intstr.IntOrString, end ...int32) networkingv1.NetworkPolicyPort {
	np := networkingv1.NetworkPolicyPort{Port: &p}
	if len(end) > 0 {
		np.EndPort = &end[0]
	}
	return np
}

// TestEvaluate reads the API reference sentence by sentence: each case is
// one rule of it, checked on one packet.
func TestEvaluate(t *testing.T) {
	web := map[string]string{"app": "web"}
	cli := map[string]string{"app": "client"}
	server := withPort(pod("x", "server", "n1", t0, web, "10.0.0.1", "fd00::1"), "http", "", 8080)
	client := pod("x", "client", "n2", t0, cli, "10.0.0.2", "fd00::2")
	other := pod("y", "client", "n2", t0, cli, "10.0.0.3")
	namespaces := []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "x", Labels: map[string]string{"team": "a"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "y", Labels: map[string]string{"team": "b"}}},
	}
	nodes := map[string][]netip.Addr{"n1": {netip.MustParseAddr("192.0.2.1")}, "n2": {netip.MustParseAddr("192.0.2.2")}}
	allowClient := func(extra ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicySpec {
		return ingressFrom(sel("app", "web"), []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "client")}}, extra...)
	}
	sidecar := func(always bool) *corev1.Pod {
		p := pod("x", "server", "n1", t0, web, "10.0.0.1")
		c := corev1.Container{Name: "side", Ports: []corev1.ContainerPort{{Name: "side", ContainerPort: 7070}}}
		if always {
			c.RestartPolicy = new(corev1.ContainerRestartPolicyAlways)
		}
		p.Spec.InitContainers = []corev1.Container{c}
		return p
	}
	block := func(cidr string, except ...string) []networkingv1.NetworkPolicyPeer {
		return []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}}
	}
	tests := []struct {
		name     string
		pods     []*corev1.Pod
		policies []*networkingv1.NetworkPolicy
		src, dst string
		proto    corev1.Protocol
		port     int32
		want     bool
		wantBy   []RuleRef // checked when not nil
	}{
		{name: "no policy: allowed", src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: true},
		{name: "empty ingress isolates", policies: []*networkingv1.NetworkPolicy{policy("x", "deny", networkingv1.NetworkPolicySpec{PodSelector: *sel("app", "web")})},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: false},
		{name: "default types: ingress only without egress rules", policies: []*networkingv1.NetworkPolicy{policy("x", "deny", networkingv1.NetworkPolicySpec{})},
			src: "10.0.0.1", dst: "10.0.0.3", port: 80, want: true},
		{name: "default types: egress with egress rules", policies: []*networkingv1.NetworkPolicy{policy("x", "eg", networkingv1.NetworkPolicySpec{PodSelector: *sel("app", "web"),
			Egress: []networkingv1.NetworkPolicyEgressRule{{To: block("10.0.0.2/32")}}})},
			src: "10.0.0.1", dst: "10.0.0.3", port: 80, want: false},
		{name: "explicit egress type ignores ingress rules", policies: []*networkingv1.NetworkPolicy{policy("x", "eg", networkingv1.NetworkPolicySpec{
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}, Ingress: []networkingv1.NetworkPolicyIngressRule{{}}})},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: false},
		{name: "peer podSelector in own namespace", policies: []*networkingv1.NetworkPolicy{policy("x", "allow", allowClient())},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: true, wantBy: []RuleRef{{"x/allow", Ingress, 0}}},
		{name: "peer podSelector not in another namespace", policies: []*networkingv1.NetworkPolicy{policy("x", "allow", allowClient())},
			src: "10.0.0.3", dst: "10.0.0.1", port: 80, want: false},
		{name: "namespaceSelector AND podSelector", policies: []*networkingv1.NetworkPolicy{policy("x", "and", ingressFrom(sel("app", "web"),
			[]networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("team", "b"), PodSelector: sel("app", "web")}}))},
			src: "10.0.0.3", dst: "10.0.0.1", port: 80, want: false},
		{name: "namespaceSelector by the name label the API server sets", policies: []*networkingv1.NetworkPolicy{policy("x", "ns", ingressFrom(sel("app", "web"),
			[]networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel(corev1.LabelMetadataName, "y")}}))},
			src: "10.0.0.3", dst: "10.0.0.1", port: 80, want: true},
		{name: "ipBlock", policies: []*networkingv1.NetworkPolicy{policy("x", "b", ingressFrom(sel("app", "web"), block("10.0.0.0/30")))},
			src: "10.0.0.3", dst: "10.0.0.1", port: 80, want: true},
		{name: "ipBlock except", policies: []*networkingv1.NetworkPolicy{policy("x", "b", ingressFrom(sel("app", "web"), block("10.0.0.0/30", "10.0.0.2/31")))},
			src: "10.0.0.3", dst: "10.0.0.1", port: 80, want: false},
		{name: "ipBlock except outside the cidr excludes nothing", policies: []*networkingv1.NetworkPolicy{policy("x", "b", ingressFrom(sel("app", "web"), block("10.0.0.2/31", "10.0.0.0/24")))},
			src: "10.0.0.3", dst: "10.0.0.1", port: 80, want: true},
		{name: "IPv6 ipBlock", policies: []*networkingv1.NetworkPolicy{policy("x", "b", ingressFrom(sel("app", "web"), block("fd00::/120", "fd00::1/128")))},
			src: "fd00::2", dst: "fd00::1", port: 80, want: true},
		{name: "IPv4 ipBlock does not match IPv6", policies: []*networkingv1.NetworkPolicy{policy("x", "b", ingressFrom(sel("app", "web"), block("0.0.0.0/0")))},
			src: "fd00::2", dst: "fd00::1", port: 80, want: false},
		{name: "ipBlock with a selector matches nothing", policies: []*networkingv1.NetworkPolicy{policy("x", "b", ingressFrom(sel("app", "web"),
			[]networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0"}, PodSelector: &metav1.LabelSelector{}}}))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: false},
		{name: "port defaults to TCP", policies: []*networkingv1.NetworkPolicy{policy("x", "p", allowClient(tcpPort(intstr.FromInt32(80))))},
			src: "10.0.0.2", dst: "10.0.0.1", proto: corev1.ProtocolUDP, port: 80, want: false},
		{name: "endPort is inclusive", policies: []*networkingv1.NetworkPolicy{policy("x", "p", allowClient(tcpPort(intstr.FromInt32(80), 90)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 90, want: true},
		{name: "endPort ends the range", policies: []*networkingv1.NetworkPolicy{policy("x", "p", allowClient(tcpPort(intstr.FromInt32(80), 90)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 91, want: false},
		{name: "named port of the destination pod", policies: []*networkingv1.NetworkPolicy{policy("x", "p", allowClient(tcpPort(intstr.FromString("http"))))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 8080, want: true},
		{name: "named port with endPort matches nothing", policies: []*networkingv1.NetworkPolicy{policy("x", "p", allowClient(tcpPort(intstr.FromString("http"), 9000)))},
			src: "10.0.0.2", dst: "10.0.0.1", port: 8080, want: false},
		{name: "egress named port resolves on the destination", pods: []*corev1.Pod{withPort(pod("x", "client", "n2", t0, cli, "10.0.0.2"), "http", "", 9090), server},
			policies: []*networkingv1.NetworkPolicy{policy("x", "eg", networkingv1.NetworkPolicySpec{PodSelector: *sel("app", "client"),
				Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{tcpPort(intstr.FromString("http"))}}}})},
			src: "10.0.0.2", dst: "10.0.0.1", port: 8080, want: true},
		{name: "egress named port of the source does not count", pods: []*corev1.Pod{withPort(pod("x", "client", "n2", t0, cli, "10.0.0.2"), "http", "", 9090), server},
			policies: []*networkingv1.NetworkPolicy{policy("x", "eg", networkingv1.NetworkPolicySpec{PodSelector: *sel("app", "client"),
				Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{tcpPort(intstr.FromString("http"))}}}})},
			src: "10.0.0.2", dst: "10.0.0.1", port: 9090, want: false},
		{name: "named port of a sidecar counts", pods: []*corev1.Pod{sidecar(true), client},
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", allowClient(tcpPort(intstr.FromString("side"))))},
			src:      "10.0.0.2", dst: "10.0.0.1", port: 7070, want: true},
		{name: "named port of a plain init container does not", pods: []*corev1.Pod{sidecar(false), client},
			policies: []*networkingv1.NetworkPolicy{policy("x", "p", allowClient(tcpPort(intstr.FromString("side"))))},
			src:      "10.0.0.2", dst: "10.0.0.1", port: 7070, want: false},
		{name: "traffic from the pod's node", policies: []*networkingv1.NetworkPolicy{policy("x", "deny", networkingv1.NetworkPolicySpec{})},
			src: "192.0.2.1", dst: "10.0.0.1", port: 80, want: true},
		{name: "traffic from another node", policies: []*networkingv1.NetworkPolicy{policy("x", "deny", networkingv1.NetworkPolicySpec{})},
			src: "192.0.2.2", dst: "10.0.0.1", port: 80, want: false},
		{name: "a pod to its own address", policies: []*networkingv1.NetworkPolicy{policy("x", "deny", networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{"Ingress", "Egress"}})},
			src: "10.0.0.1", dst: "10.0.0.1", port: 80, want: true},
		{name: "an invalid podSelector selects nothing", policies: []*networkingv1.NetworkPolicy{policy("x", "bad", networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{
			MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}}})},
			src: "10.0.0.2", dst: "10.0.0.1", port: 80, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pods := tt.pods
			if pods == nil {
				pods = []*corev1.Pod{server, client, other}
			}
			cl := &Cluster{Pods: pods, Namespaces: namespaces, Policies: tt.policies, NodeAddresses: nodes}
			proto := tt.proto
			if proto == "" {
				proto = corev1.ProtocolTCP
			}
			v := Evaluate(cl, Packet{Src: netip.MustParseAddr(tt.src), Dst: netip.MustParseAddr(tt.dst), Protocol: proto, Port: tt.port})
			if v.Allowed != tt.want {
				t.Fatalf("allowed = %v, want %v\n%s", v.Allowed, tt.want, v.Explain())
			}
			if tt.wantBy != nil && !reflect.DeepEqual(v.Ingress.AllowedBy, tt.wantBy) {
				t.Errorf("allowed by %v, want %v", v.Ingress.AllowedBy, tt.wantBy)
			}
		})
	}
}

// TestOwnerOf: an address two pods claim belongs to the newest endpoint,
// ties broken by namespace then name; non-endpoints never own.
func TestOwnerOf(t *testing.T) {
	host := pod("x", "host", "n1", t0.Add(time.Hour), nil, "10.0.0.1")
	host.Spec.HostNetwork = true
	done := pod("x", "done", "n1", t0.Add(time.Hour), nil, "10.0.0.1")
	done.Status.Phase = corev1.PodSucceeded
	tests := []struct {
		name string
		pods []*corev1.Pod
		want string
	}{
		{"one pod", []*corev1.Pod{pod("x", "a", "n1", t0, nil, "10.0.0.1")}, "x/a"},
		{"newest wins", []*corev1.Pod{pod("x", "new", "n1", t0.Add(time.Second), nil, "10.0.0.1"), pod("x", "old", "n1", t0, nil, "10.0.0.1")}, "x/new"},
		{"newest wins in any order", []*corev1.Pod{pod("x", "old", "n1", t0, nil, "10.0.0.1"), pod("x", "new", "n1", t0.Add(time.Second), nil, "10.0.0.1")}, "x/new"},
		{"tie: namespace first", []*corev1.Pod{pod("y", "a", "n1", t0, nil, "10.0.0.1"), pod("x", "b", "n1", t0, nil, "10.0.0.1")}, "x/b"},
		{"tie: then name", []*corev1.Pod{pod("x", "b", "n1", t0, nil, "10.0.0.1"), pod("x", "a", "n1", t0, nil, "10.0.0.1")}, "x/a"},
		{"namespace before name, not the joined key", []*corev1.Pod{pod("x-y", "a", "n1", t0, nil, "10.0.0.1"), pod("x", "z", "n1", t0, nil, "10.0.0.1")}, "x/z"},
		{"host network and finished pods never own", []*corev1.Pod{host, done, pod("x", "old", "n1", t0, nil, "10.0.0.1")}, "x/old"},
		{"mapped form is the IPv4 address", []*corev1.Pod{pod("x", "a", "n1", t0, nil, "::ffff:10.0.0.1")}, "x/a"},
		{"nobody", []*corev1.Pod{host, done}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := keyOf((&Cluster{Pods: tt.pods}).OwnerOf(netip.MustParseAddr("10.0.0.1")))
			if got != tt.want {
				t.Errorf("owner = %q, want %q", got, tt.want)
			}
		})
	}
}

// TestSharedAddressUsesOwnersLabelsAndPorts: a stale pod claiming the
// address of a newer one lends it neither its labels nor its named ports.
func TestSharedAddressUsesOwnersLabelsAndPorts(t *testing.T) {
	stale := withPort(pod("x", "stale", "n1", t0, map[string]string{"app": "client"}, "10.0.0.9"), "http", "", 80)
	owner := withPort(pod("x", "owner", "n1", t0.Add(time.Minute), map[string]string{"app": "other"}, "10.0.0.9"), "http", "", 81)
	server := pod("x", "server", "n1", t0, map[string]string{"app": "web"}, "10.0.0.1")
	allow := policy("x", "allow", ingressFrom(sel("app", "web"), []networkingv1.NetworkPolicyPeer{{PodSelector: sel("app", "client")}}))
	egress := policy("x", "eg", networkingv1.NetworkPolicySpec{PodSelector: *sel("app", "web"),
		Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{tcpPort(intstr.FromString("http"))}}}})
	cl := &Cluster{Pods: []*corev1.Pod{stale, owner, server}, Policies: []*networkingv1.NetworkPolicy{allow, egress}}
	tests := []struct {
		name     string
		src, dst string
		port     int32
		want     bool
	}{
		{"the stale pod's labels do not count", "10.0.0.9", "10.0.0.1", 80, false},
		{"the owner's named port counts", "10.0.0.1", "10.0.0.9", 81, true},
		{"the stale pod's named port does not", "10.0.0.1", "10.0.0.9", 80, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Evaluate(cl, Packet{Src: netip.MustParseAddr(tt.src), Dst: netip.MustParseAddr(tt.dst), Protocol: corev1.ProtocolTCP, Port: tt.port})
			if v.Allowed != tt.want {
				t.Errorf("allowed = %v, want %v\n%s", v.Allowed, tt.want, v.Explain())
			}
		})
	}
}
