package nft

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
)

// commitMessages runs the Enforcer's apply of plan against a recording
// connection instead of the kernel and returns the messages of the
// transaction, after checking they form exactly one batch (one begin
// marker first, one end marker last); an empty plan sends nothing.
func commitMessages(t *testing.T, committed, desired *Ruleset, plan *Plan) int {
	t.Helper()
	table := &nftables.Table{Name: "nftpol", Family: nftables.TableFamilyINet}
	var sent []netlink.Message
	c, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		sent = append(sent, req...)
		return req, nil // echoed as acknowledgements
	}))
	if err != nil {
		t.Fatal(err)
	}
	if err := plan.queue(c, table); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if len(sent) == 0 {
		return 0
	}
	const batchBegin, batchEnd = 0x10, 0x11 // NFNL_MSG_BATCH_BEGIN, _END
	markers := 0
	for _, m := range sent {
		if m.Header.Type == batchBegin || m.Header.Type == batchEnd {
			markers++
		}
	}
	if sent[0].Header.Type != batchBegin || sent[len(sent)-1].Header.Type != batchEnd || markers != 2 {
		t.Fatalf("the commit is not one batch: %d messages with %d batch markers", len(sent), markers)
	}
	return len(sent) - 2
}

// batchOf returns the messages and the plan counts of the commit that
// takes the table of before to that of after.
func batchOf(t *testing.T, before, after *selectors.Model) (int, PlanStats) {
	t.Helper()
	cfg := Config{Table: "nftpol", Deny: DenyReject}
	committed, desired := Compile(before, cfg), Compile(after, cfg)
	plan := Diff(committed, desired)
	return commitMessages(t, committed, desired, plan), plan.Stats(desired)
}

// batchCluster is a small cluster seen from node-a: two local pods in x,
// one isolated for ingress by x/allow-clients, clients and others in y on
// node-b.
func batchCluster() *selectors.State {
	pod := func(ns, name, node string, labels map[string]string, ips ...string) *selectors.Pod {
		p := &selectors.Pod{Namespace: ns, Name: name, NodeName: node, Labels: labels}
		for _, ip := range ips {
			p.IPs = append(p.IPs, netip.MustParseAddr(ip))
		}
		return p
	}
	tcp := corev1.ProtocolTCP
	port80 := intstr.FromInt32(80)
	return &selectors.State{
		Namespaces: []*selectors.Namespace{
			{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x"}},
			{Name: "y", Labels: map[string]string{"kubernetes.io/metadata.name": "y"}},
		},
		Pods: []*selectors.Pod{
			pod("x", "server", "node-a", map[string]string{"app": "server"}, "10.0.1.1", "fd00:1::1"),
			pod("x", "web", "node-a", map[string]string{"app": "web"}, "10.0.1.2", "fd00:1::2"),
			pod("y", "client-1", "node-b", map[string]string{"role": "client"}, "10.0.2.1", "fd00:2::1"),
			pod("y", "client-2", "node-b", map[string]string{"role": "client"}, "10.0.2.2", "fd00:2::2"),
			pod("y", "other", "node-b", map[string]string{"role": "other"}, "10.0.2.3", "fd00:2::3"),
		},
		Policies: []*networkingv1.NetworkPolicy{{
			ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "allow-clients"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "server"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{
					From: []networkingv1.NetworkPolicyPeer{{
						NamespaceSelector: &metav1.LabelSelector{},
						PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}},
					}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port80}},
				}},
			},
		}},
	}
}

// TestBatchOfTypicalChanges pins what one commit carries for the changes a
// cluster sees all day: a change is a handful of netlink messages, never a
// rebuild. A regression to full or wider rewrites fails here.
func TestBatchOfTypicalChanges(t *testing.T) {
	findPod := func(s *selectors.State, key string) *selectors.Pod {
		for _, p := range s.Pods {
			if p.Key() == key {
				return p
			}
		}
		t.Fatalf("no pod %s", key)
		return nil
	}
	for _, tt := range []struct {
		name     string
		change   func(s *selectors.State)
		messages int
		want     PlanStats
	}{
		{"nothing", func(*selectors.State) {}, 0, PlanStats{}},
		{"remote pod joins a peer set", func(s *selectors.State) {
			findPod(s, "y/other").Labels = map[string]string{"role": "client"}
		}, 2, PlanStats{ElementsAdded: 2}},
		{"remote pod leaves a peer set", func(s *selectors.State) {
			findPod(s, "y/client-2").Terminal = true
		}, 2, PlanStats{ElementsDeleted: 2}},
		{"remote pod no policy selects comes and goes", func(s *selectors.State) {
			s.Pods = append(s.Pods, &selectors.Pod{Namespace: "y", Name: "new", NodeName: "node-b",
				Labels: map[string]string{"role": "other"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.2.9")}})
		}, 0, PlanStats{}},
		{"local pod joins an isolated group", func(s *selectors.State) {
			findPod(s, "x/web").Labels = map[string]string{"app": "server"}
		}, 2, PlanStats{ElementsAdded: 2}},
		{"local pod leaves an isolated group", func(s *selectors.State) {
			findPod(s, "x/server").Labels = map[string]string{"app": "web"}
		}, 8, PlanStats{ElementsDeleted: 2, ChainsDeleted: 2, SetsDeleted: 2}},
		{"policy gains a port", func(s *selectors.State) {
			udp := corev1.ProtocolUDP
			p := intstr.FromInt32(53)
			r := &s.Policies[0].Spec.Ingress[0]
			r.Ports = append(r.Ports, networkingv1.NetworkPolicyPort{Protocol: &udp, Port: &p})
		}, 5, PlanStats{SetsAdded: 1, ElementsAdded: 2, ChainsRewritten: 1, RulesWritten: 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := batchCluster()
			after := batchCluster()
			tt.change(after)
			mb, _ := selectors.BuildModel("node-a", before)
			ma, _ := selectors.BuildModel("node-a", after)
			messages, stats := batchOf(t, mb, ma)
			if stats != tt.want || messages != tt.messages {
				t.Fatalf("the commit carries %d messages, %+v; want %d, %+v", messages, stats, tt.messages, tt.want)
			}
			// The transaction itself, in nft syntax, is pinned too.
			cfg := Config{Deny: DenyReject}
			plan := Diff(Compile(mb, cfg), Compile(ma, cfg))
			golden(t, filepath.Join("plans", strings.ReplaceAll(tt.name, " ", "-")+".nft"), plan.String())
		})
	}
}

// TestBatchOfAFullCommitIsOneTransaction: the first commit of the same
// cluster writes everything in one batch.
func TestBatchOfAFullCommitIsOneTransaction(t *testing.T) {
	m, _ := selectors.BuildModel("node-a", batchCluster())
	desired := Compile(m, Config{Table: "nftpol", Deny: DenyReject})
	messages := commitMessages(t, nil, desired, Diff(nil, desired))
	chains, rules, sets, elems := desired.Counts()
	t.Logf("full commit: one batch of %d messages for %d chains, %d rules, %d sets, %d elements", messages, chains, rules, sets, elems)
}

// cnpCluster is batchCluster with an Admin ClusterNetworkPolicy: pods of x
// labelled tier=front (x/server, which a NetworkPolicy also isolates, and
// x/api, which none does) deny ingress from pods labelled role=bad.
func cnpCluster() *selectors.State {
	s := batchCluster()
	for _, p := range s.Pods {
		if p.Key() == "x/server" {
			p.Labels = map[string]string{"app": "server", "tier": "front"}
		}
	}
	s.Pods = append(s.Pods, &selectors.Pod{Namespace: "x", Name: "api", NodeName: "node-a",
		Labels: map[string]string{"app": "api", "tier": "front"}, IPs: []netip.Addr{netip.MustParseAddr("10.0.1.3"), netip.MustParseAddr("fd00:1::3")}})
	s.ClusterPolicies = []*cnpv1beta1.ClusterNetworkPolicy{{
		ObjectMeta: metav1.ObjectMeta{Name: "deny-bad"},
		Spec: cnpv1beta1.ClusterNetworkPolicySpec{Tier: cnpv1beta1.AdminTier, Priority: 5,
			Subject: cnpv1beta1.ClusterNetworkPolicySubject{Pods: &cnpv1beta1.NamespacedPod{
				NamespaceSelector: metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "x"}},
				PodSelector:       metav1.LabelSelector{MatchLabels: map[string]string{"tier": "front"}}}},
			Ingress: []cnpv1beta1.ClusterNetworkPolicyIngressRule{{Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny,
				From: []cnpv1beta1.ClusterNetworkPolicyIngressPeer{{Pods: &cnpv1beta1.NamespacedPod{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "bad"}}}}}}}},
	}}
	return s
}

// TestBatchOfClusterPolicyChanges: a pod joining or leaving a
// ClusterNetworkPolicy subject or peer is a few elements, like a
// NetworkPolicy's.
func TestBatchOfClusterPolicyChanges(t *testing.T) {
	relabel := func(key string, labels map[string]string) func(*selectors.State) {
		return func(s *selectors.State) {
			for _, p := range s.Pods {
				if p.Key() == key {
					p.Labels = labels
				}
			}
		}
	}
	for _, tt := range []struct {
		name     string
		change   func(s *selectors.State)
		messages int
		want     PlanStats
	}{
		{"cnp remote pod joins a peer set", relabel("y/other", map[string]string{"role": "bad"}), 2, PlanStats{ElementsAdded: 2}},
		{"cnp remote pod leaves a peer set", func(s *selectors.State) {
			relabel("y/other", map[string]string{"role": "bad"})(s)
		}, 2, PlanStats{ElementsDeleted: 2}},
		{"cnp local pod joins a subject", relabel("x/web", map[string]string{"app": "web", "tier": "front"}), 2, PlanStats{ElementsAdded: 2}},
		{"cnp local pod leaves a subject", relabel("x/api", map[string]string{"app": "api"}), 4, PlanStats{ElementsDeleted: 2, ChainsDeleted: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before, after := cnpCluster(), cnpCluster()
			if strings.Contains(tt.name, "leaves a peer set") {
				tt.change(before) // y/other starts in the peer set
			} else {
				tt.change(after)
			}
			mb, _ := selectors.BuildModel("node-a", before)
			ma, _ := selectors.BuildModel("node-a", after)
			messages, stats := batchOf(t, mb, ma)
			if stats != tt.want || messages != tt.messages {
				t.Fatalf("the commit carries %d messages, %+v; want %d, %+v", messages, stats, tt.messages, tt.want)
			}
			cfg := Config{Deny: DenyReject}
			plan := Diff(Compile(mb, cfg), Compile(ma, cfg))
			golden(t, filepath.Join("plans", strings.ReplaceAll(tt.name, " ", "-")+".nft"), plan.String())
		})
	}
}
