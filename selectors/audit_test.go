package selectors

import (
	"reflect"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// TestModeAnnotation: a policy in audit mode is in its pods' Audit lists
// and in no verdict list; an unknown value is a problem and the policy is
// enforced (fail closed).
func TestModeAnnotation(t *testing.T) {
	np := func(mode string) *networkingv1.NetworkPolicy {
		p := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "np"},
			Spec: networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
		if mode != "" {
			p.Annotations = map[string]string{ModeAnnotation: mode}
		}
		return p
	}
	cnp := func(mode string) *cnpv1beta1.ClusterNetworkPolicy {
		c := &cnpv1beta1.ClusterNetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "cnp"},
			Spec: cnpv1beta1.ClusterNetworkPolicySpec{Tier: cnpv1beta1.AdminTier, Priority: 5,
				Subject: cnpv1beta1.ClusterNetworkPolicySubject{Namespaces: &metav1.LabelSelector{}},
				Egress:  []cnpv1beta1.ClusterNetworkPolicyEgressRule{{Action: cnpv1beta1.ClusterNetworkPolicyRuleActionDeny, To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{Namespaces: &metav1.LabelSelector{}}}}}}}
		if mode != "" {
			c.Annotations = map[string]string{ModeAnnotation: mode}
		}
		return c
	}
	tests := []struct {
		name                    string
		npMode, cnpMode         string
		wantIngress             []string
		wantAdmin               []string
		wantAudit               [2][]string
		wantProblem, wantCNPBad bool
	}{
		{"enforced", "", "", []string{"x/np"}, []string{"cnp"}, [2][]string{}, false, false},
		{"explicitly enforced", ModeEnforce, ModeEnforce, []string{"x/np"}, []string{"cnp"}, [2][]string{}, false, false},
		{"both in audit", ModeAudit, ModeAudit, nil, nil, [2][]string{{"x/np"}, {"cnp"}}, false, false},
		{"NetworkPolicy in audit", ModeAudit, "", nil, []string{"cnp"}, [2][]string{{"x/np"}, nil}, false, false},
		{"unknown values fail closed", "Audit", "dry-run", []string{"x/np"}, []string{"cnp"}, [2][]string{}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &State{Pods: []*Pod{{Namespace: "x", Name: "a", NodeName: "n", IPs: addrs("10.0.0.1")}},
				Namespaces: []*Namespace{{Name: "x", Labels: map[string]string{"kubernetes.io/metadata.name": "x"}}},
				Policies:   []*networkingv1.NetworkPolicy{np(tt.npMode)}, ClusterPolicies: []*cnpv1beta1.ClusterNetworkPolicy{cnp(tt.cnpMode)}}
			m, problems := BuildModel("n", s)
			if len(m.Pods) != 1 {
				t.Fatalf("pods: %+v", m.Pods)
			}
			p := m.Pods[0]
			if !reflect.DeepEqual(p.Ingress, tt.wantIngress) || !reflect.DeepEqual(p.Cluster[Egress].Admin, tt.wantAdmin) {
				t.Errorf("ingress %v, admin egress %v; want %v, %v", p.Ingress, p.Cluster[Egress].Admin, tt.wantIngress, tt.wantAdmin)
			}
			if !reflect.DeepEqual(p.Audit, tt.wantAudit) {
				t.Errorf("audit %v, want %v", p.Audit, tt.wantAudit)
			}
			var npBad, cnpBad bool
			for _, pr := range problems {
				if strings.Contains(pr.Reason, ModeAnnotation) {
					if pr.Cluster {
						cnpBad = true
					} else {
						npBad = true
					}
					t.Logf("problem: %s: %s", pr.Policy, pr.Reason)
				}
			}
			if npBad != tt.wantProblem || cnpBad != tt.wantCNPBad {
				t.Errorf("mode problems: NetworkPolicy %v, ClusterNetworkPolicy %v; want %v, %v", npBad, cnpBad, tt.wantProblem, tt.wantCNPBad)
			}
		})
	}
}
