package main

import (
	"bytes"
	"context"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

func TestParseAgentFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		env     string
		wantErr string
	}{
		{"minimal", []string{"--node-name", "n1"}, "", ""},
		{"node from env", nil, "n1", ""},
		{"no node", nil, "", "--node-name"},
		{"bad deny action", []string{"--node-name", "n1", "--deny-action", "shrug"}, "", "drop or reject"},
		{"stray argument", []string{"--node-name", "n1", "extra"}, "", "unexpected arguments"},
		{"unknown flag", []string{"--node-name", "n1", "--nope"}, "", "flag provided but not defined"},
		{"negative verify", []string{"--node-name", "n1", "--verify-interval", "-1s"}, "", "negative"},
		{"pod CIDRs", []string{"--node-name", "n1", "--pod-cidrs", "10.244.1.0/24, fd00:10:244:1::/64"}, "", ""},
		{"bad pod CIDR", []string{"--node-name", "n1", "--pod-cidrs", "10.244.1.0/33"}, "", "pod CIDR"},
		{"lookup threshold", []string{"--node-name", "n1", "--lookup-min-policies", "1"}, "", ""},
		{"negative lookup threshold", []string{"--node-name", "n1", "--lookup-min-policies", "-1"}, "", "invalid value"},
		{"pod CIDRs without guard", []string{"--node-name", "n1", "--pod-address-guard=false", "--pod-cidrs", "10.0.0.0/8"}, "", "--pod-address-guard=false"},
		{"json watches", []string{"--node-name", "n1", "--api-wire-format", "json"}, "", ""},
		{"bad wire format", []string{"--node-name", "n1", "--api-wire-format", "yaml"}, "", "protobuf or json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("NODE_NAME", tt.env)
			_, err := parseAgentFlags(tt.args, &bytes.Buffer{})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestUnknownCommand(t *testing.T) {
	err := run(context.Background(), []string{"frobnicate"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Fatalf("error = %v", err)
	}
}

func TestVersionCommand(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(out.String()); got != version {
		t.Fatalf("version printed %q, want %q", got, version)
	}
}

// netnsPrefix names the network namespaces of this package's tests.
const netnsPrefix = "nftpol-main"

// TestCleanupRemovesOnlyOurTable runs `nftpol cleanup` on a namespace
// holding our table and a foreign one.
func TestCleanupRemovesOnlyOurTable(t *testing.T) {
	kerneltest.Require(t, kerneltest.NftBinary)
	ns := kerneltest.Netns(t, netnsPrefix)
	kerneltest.Nft(t, ns, "add", "table", "inet", "nftpol")
	kerneltest.Nft(t, ns, "add", "table", "inet", "foreign")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"cleanup", "--netns", ns}, &out, &out); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	tables := kerneltest.Nft(t, ns, "list", "tables")
	if strings.Contains(tables, "nftpol") || !strings.Contains(tables, "foreign") {
		t.Fatalf("after cleanup: %s", tables)
	}
	// A second cleanup finds nothing to do and succeeds.
	if err := run(context.Background(), []string{"cleanup", "--netns", ns}, &out, &out); err != nil {
		t.Fatalf("second cleanup: %v", err)
	}
}

func TestExplain(t *testing.T) {
	cp := testbed.StartControlPlaneT(t)
	ctx := context.Background()
	cs := cp.Clientset
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "e"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, ip := range map[string]string{"server": "10.9.0.1", "client": "10.9.0.2"} {
		pod, err := cs.CoreV1().Pods("e").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": name}},
			Spec:       corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Image: "i"}}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
		if _, err := cs.CoreV1().Pods("e").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}}}}
	if _, err := cs.NetworkingV1().NetworkPolicies("e").Create(ctx, deny, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	explain := func(args ...string) string {
		var out, errOut bytes.Buffer
		if err := run(ctx, append([]string{"explain", "--kubeconfig", cp.Kubeconfig}, args...), &out, &errOut); err != nil {
			t.Fatalf("explain %v: %v: %s", args, err, errOut.String())
		}
		return out.String()
	}
	out := explain("--from", "e/client", "--to", "e/server", "--port", "80")
	for _, want := range []string{"DENIED", "e/server is isolated by e/deny"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	allow := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "allow-client"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}}}}}},
		}}
	if _, err := cs.NetworkingV1().NetworkPolicies("e").Create(ctx, allow, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	out = explain("--from", "e/client", "--to", "e/server", "--port", "80/udp")
	for _, want := range []string{"ALLOWED", "by e/allow-client ingress[0]"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	out = explain("--from", "e/server", "--to", "192.0.2.9", "--port", "443")
	if !strings.Contains(out, "ALLOWED") || !strings.Contains(out, "no policy isolates e/server for egress") {
		t.Errorf("explain to an outside address:\n%s", out)
	}
	var errOut bytes.Buffer
	if err := run(ctx, []string{"explain", "--kubeconfig", cp.Kubeconfig, "--from", "e/nope", "--to", "e/server", "--port", "80"}, &bytes.Buffer{}, &errOut); err == nil || !strings.Contains(err.Error(), "no pod e/nope") {
		t.Errorf("unknown pod: %v", err)
	}
}

func TestDump(t *testing.T) {
	ns := kerneltest.Netns(t, netnsPrefix)
	e, err := nft.NewEnforcer(nft.Config{NetNSPath: ns})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	model := &selectors.Model{
		Pods: []selectors.PodRules{{Key: "x/a", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Ingress: []string{"x/web"}}},
		Policies: []selectors.PolicyRules{{Key: "x/web", HasIngress: true, Ingress: []selectors.Rule{
			{Peers: selectors.PeerMatch{Sets: []string{"clients"}}, Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: 80}}}},
		}}},
		AddrSets: []selectors.AddrSet{{ID: "clients", Description: "pods in x matching app=client", Addrs: []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")}}},
	}
	if _, err := e.Commit(nft.Compile(model, e.Config())); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := run(context.Background(), []string{"dump", "--netns", ns}, &out, &out); err != nil {
		t.Fatalf("dump: %v: %s", err, out.String())
	}
	for _, want := range []string{
		"table inet nftpol {",
		"# 2 elements: pods in x matching app=client\n\tset a-8f4d9088121acfab-v4 { type ipv4_addr; }",
		"# isolation by x/web (ingress)",
		"# allows of x/web (ingress)",
		"type filter hook forward priority 1; policy accept;",
		`ip saddr @a-8f4d9088121acfab-v4 tcp dport 80 counter accept comment "x/web ingress[0]"`,
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("dump lacks %q:\n%s", want, out.String())
		}
	}
}
