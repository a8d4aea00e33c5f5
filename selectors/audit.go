package selectors

import "fmt"

// ModeAnnotation puts a NetworkPolicy or a ClusterNetworkPolicy in audit
// mode ("audit") or keeps it enforced ("enforce", the same as no
// annotation). A policy in audit mode changes nothing of what is allowed:
// the Model leaves it out of every pod's isolation and tiers and lists it
// in PodRules.Audit instead, so the compiler can count what it would deny.
// Any other value is a problem and the policy is enforced: a typo must not
// open what the policy closes.
const ModeAnnotation = "nftpol.io/mode"

// The values of ModeAnnotation.
const (
	ModeAudit   = "audit"
	ModeEnforce = "enforce"
)

// policyMode reads ModeAnnotation: whether the policy is in audit mode,
// and the problem of a value it does not know (then enforced).
func policyMode(annotations map[string]string) (audit bool, problem string) {
	v, ok := annotations[ModeAnnotation]
	switch {
	case !ok || v == ModeEnforce:
		return false, ""
	case v == ModeAudit:
		return true, ""
	}
	return false, fmt.Sprintf("annotation %s=%q is neither %q nor %q, the policy is enforced", ModeAnnotation, v, ModeAudit, ModeEnforce)
}

// ModeAnnotations returns the part of an object's annotations the agent
// reads (ModeAnnotation), nil when it is absent: a cache that drops
// annotations to save memory keeps this one.
func ModeAnnotations(annotations map[string]string) map[string]string {
	if v, ok := annotations[ModeAnnotation]; ok {
		return map[string]string{ModeAnnotation: v}
	}
	return nil
}

// ModeChanged reports whether an update changed ModeAnnotation (its value
// or its presence): a watch that ignores metadata-only updates must not
// ignore this one.
func ModeChanged(old, new map[string]string) bool {
	o, okOld := old[ModeAnnotation]
	n, okNew := new[ModeAnnotation]
	return okOld != okNew || o != n
}
