package reference

import "sort"

// nftpol's audit mode, read here on its own: a NetworkPolicy or
// ClusterNetworkPolicy annotated nftpol.io/mode=audit changes nothing of
// what is allowed. Any other value, like no annotation, leaves the policy
// enforced: only the exact word "audit" opens anything.
const (
	modeAnnotation = "nftpol.io/mode"
	modeAudit      = "audit"
)

func inAudit(annotations map[string]string) bool {
	return annotations[modeAnnotation] == modeAudit
}

// AuditPolicies lists the policies in audit mode: NetworkPolicies by
// "namespace/name", ClusterNetworkPolicies by name, ascending.
func AuditPolicies(c *Cluster) []string {
	var out []string
	for _, np := range c.Policies {
		if np != nil && inAudit(np.Annotations) {
			out = append(out, keyOfPolicy(np))
		}
	}
	for _, cnp := range c.ClusterPolicies {
		if cnp != nil && inAudit(cnp.Annotations) {
			out = append(out, cnp.Name)
		}
	}
	sort.Strings(out)
	return out
}

// enforcing returns c with the policies in audit mode left out, but for
// the one named keep ("" keeps none), which then counts as enforced.
func (c *Cluster) enforcing(keep string) *Cluster {
	out := *c
	out.Policies, out.ClusterPolicies = nil, nil
	for _, np := range c.Policies {
		if np == nil || !inAudit(np.Annotations) || keyOfPolicy(np) == keep {
			out.Policies = append(out.Policies, np)
		}
	}
	for _, cnp := range c.ClusterPolicies {
		if cnp == nil || !inAudit(cnp.Annotations) || cnp.Name == keep {
			out.ClusterPolicies = append(out.ClusterPolicies, cnp)
		}
	}
	return &out
}

// AuditVerdict is what one policy in audit mode would do to a packet.
type AuditVerdict struct {
	Policy string
	// Actual is the decision with every policy in audit mode left out
	// (Evaluate's); Enforced the decision with Policy enforced and the
	// other policies in audit mode still left out.
	Actual, Enforced Verdict
}

// WouldDeny reports whether the packet is would-deny for the policy: the
// actual decision allows it and the decision with the policy enforced
// denies it.
func (a AuditVerdict) WouldDeny() bool { return a.Actual.Allowed && !a.Enforced.Allowed }

// SideWouldDeny reports, for one side, whether the side with the policy
// enforced denies what the actual decision of that side allows. A packet
// is would-deny when a side is and the other side allows it actually.
func (a AuditVerdict) SideWouldDeny(dir Direction) bool {
	if dir == Egress {
		return a.Actual.Egress.Allowed && !a.Enforced.Egress.Allowed
	}
	return a.Actual.Ingress.Allowed && !a.Enforced.Ingress.Allowed
}

// Audit decides p for the policy in audit mode named policy (a
// NetworkPolicy's "namespace/name" or a ClusterNetworkPolicy's name).
func Audit(c *Cluster, p Packet, policy string) AuditVerdict {
	return AuditVerdict{Policy: policy, Actual: Evaluate(c, p), Enforced: evaluate(c.enforcing(policy), p)}
}
