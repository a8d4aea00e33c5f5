package controllers

import (
	"reflect"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// TestClusterPolicyConditions: the conditions depend on the specs only,
// the same whatever order the policies come in, and are written only when
// they differ from the object's (transition times aside).
func TestClusterPolicyConditions(t *testing.T) {
	mk := func(name string, tier cnpv1beta1.Tier, prio int32) *cnpv1beta1.ClusterNetworkPolicy {
		c := adminDeny(name, prio, nil)
		c.Spec.Tier = tier
		c.Generation = 3
		return c
	}
	a, b, c := mk("a", cnpv1beta1.AdminTier, 5), mk("b", cnpv1beta1.AdminTier, 5), mk("c", cnpv1beta1.BaselineTier, 5)
	bad := mk("bad", cnpv1beta1.AdminTier, 6)
	bad.Spec.Subject = cnpv1beta1.ClusterNetworkPolicySubject{}
	partial := mk("partial", cnpv1beta1.AdminTier, 7)
	partial.Spec.Egress = []cnpv1beta1.ClusterNetworkPolicyEgressRule{{Action: "Accept", To: []cnpv1beta1.ClusterNetworkPolicyEgressPeer{{DomainNames: []cnpv1beta1.DomainName{"a.example"}}}}}
	all := []*cnpv1beta1.ClusterNetworkPolicy{a, b, c, bad, partial}
	reversed := []*cnpv1beta1.ClusterNetworkPolicy{partial, bad, c, b, a}
	status := func(conds []metav1.Condition, typ string) (metav1.ConditionStatus, string) {
		for _, c := range conds {
			if c.Type == typ {
				if c.ObservedGeneration != 3 {
					t.Errorf("%s observes generation %d, want 3", typ, c.ObservedGeneration)
				}
				return c.Status, c.Message
			}
		}
		t.Fatalf("no condition %s", typ)
		return "", ""
	}
	for _, tt := range []struct {
		cnp                    *cnpv1beta1.ClusterNetworkPolicy
		accepted, partial, tie metav1.ConditionStatus
		messageHas             string
	}{
		{a, "True", "False", "True", "shared in tier Admin with b"},
		{b, "True", "False", "True", "with a;"},
		{c, "True", "False", "False", ""},
		{bad, "False", "False", "False", "neither namespaces nor pods"},
		{partial, "True", "True", "False", "domainNames are not supported"},
	} {
		got := ClusterPolicyConditions(tt.cnp, all)
		if !reflect.DeepEqual(got, ClusterPolicyConditions(tt.cnp, reversed)) {
			t.Errorf("%s: conditions depend on the order of the policies", tt.cnp.Name)
		}
		acc, m1 := status(got, ConditionAccepted)
		par, m2 := status(got, ConditionPartiallyEnforced)
		tie, m3 := status(got, ConditionPriorityTie)
		if acc != tt.accepted || par != tt.partial || tie != tt.tie {
			t.Errorf("%s: Accepted %s PartiallyEnforced %s PriorityTie %s, want %s %s %s", tt.cnp.Name, acc, par, tie, tt.accepted, tt.partial, tt.tie)
		}
		if msgs := m1 + m2 + m3; !strings.Contains(msgs, tt.messageHas) {
			t.Errorf("%s: messages %q lack %q", tt.cnp.Name, msgs, tt.messageHas)
		}
		if conditionsDiffer(got, got) {
			t.Errorf("%s: equal conditions differ", tt.cnp.Name)
		}
		older := append([]metav1.Condition(nil), got...)
		older[0].LastTransitionTime = metav1.Unix(1, 0)
		if conditionsDiffer(older, got) {
			t.Errorf("%s: a transition time alone counts as a difference (agents would rewrite each other)", tt.cnp.Name)
		}
		older[1].Message += "!"
		if !conditionsDiffer(older, got) {
			t.Errorf("%s: a changed message goes unnoticed", tt.cnp.Name)
		}
	}
}
