package selectors

import (
	"fmt"
	"net/netip"
	"strconv"
)

// Model is everything one node enforces, resolved to addresses and ports.
// It holds no Kubernetes types, so nft/ can compile it without knowing the
// API. Every slice is sorted (pods and policies by Key, sets by ID, set
// contents ascending) so two builds from the same cluster state are equal
// and a compiled ruleset is deterministic.
type Model struct {
	// Pods are the local pods isolated in at least one direction. Local
	// pods that no policy isolates are absent: they are open.
	Pods []PodRules
	// Policies are the policies that isolate at least one local pod, with
	// their rules for the directions they isolate.
	Policies []PolicyRules
	// AddrSets are the peer address sets the rules refer to by ID.
	AddrSets []AddrSet
	// PortSets are the resolved named-port sets the rules refer to by ID.
	PortSets []PortSet
	// ClusterPolicies are the ClusterNetworkPolicies that select at least
	// one local pod in a direction they have rules for, sorted by Name.
	// Their peers and named ports use AddrSets and PortSets like the
	// rules of Policies, sharing a set where the membership is the same.
	ClusterPolicies []ClusterPolicyRules
	// Guard drops the traffic of this node's pod addresses no pod here
	// has yet; zero: no guard. The agent fills it (BuildModel does not).
	Guard PodAddrGuard
}

// PodRules says which policies decide the traffic of one local pod.
type PodRules struct {
	// Key is "namespace/name".
	Key string
	// IPs are the pod's addresses (IPv4 and/or IPv6), ascending.
	IPs []netip.Addr
	// Ingress lists the keys of the policies that isolate the pod for
	// ingress, ascending. Nil means ingress is not isolated.
	Ingress []string
	// Egress lists the keys of the policies that isolate the pod for
	// egress, ascending. Nil means egress is not isolated.
	Egress []string
	// Cluster lists, by Direction, the names of the ClusterNetworkPolicies
	// whose subject holds the pod and that have rules in that direction,
	// per tier in evaluation order (see ClusterPolicyRules.Order). A pod
	// only ClusterNetworkPolicies select is in Pods with nil Ingress and
	// Egress: the NetworkPolicy tier does not decide its traffic.
	Cluster [2]ClusterTiers
	// Audit lists, by Direction, the policies in audit mode (see
	// ModeAnnotation) that select the pod and have rules in that
	// direction, ascending: NetworkPolicy keys ("namespace/name") and
	// ClusterNetworkPolicy names (which hold no "/"). They are in no list
	// above: they do not decide the pod's traffic. A pod only audit
	// policies select is in Pods with nothing else set.
	Audit [2][]string
}

// ClusterTiers are the ClusterNetworkPolicies of one pod and direction,
// by tier, each list in evaluation order.
type ClusterTiers struct {
	Admin, Baseline []string
}

// Empty reports whether no ClusterNetworkPolicy applies.
func (t ClusterTiers) Empty() bool { return len(t.Admin) == 0 && len(t.Baseline) == 0 }

// Tier is the tier of a ClusterNetworkPolicy.
type Tier uint8

// The tiers: Admin is evaluated before the NetworkPolicies, Baseline
// after them.
const (
	TierAdmin Tier = iota + 1
	TierBaseline
)

func (t Tier) String() string {
	if t == TierBaseline {
		return "Baseline"
	}
	return "Admin"
}

// Action is what a ClusterNetworkPolicy rule does with matching traffic.
type Action uint8

// The actions. Accept and Deny are final for the direction; Pass skips
// the rest of the tier: from Admin to the NetworkPolicy tier (or, when no
// NetworkPolicy isolates the pod, to Baseline), from Baseline to the
// default, which allows.
const (
	ActionAccept Action = iota + 1
	ActionDeny
	ActionPass
)

func (a Action) String() string {
	switch a {
	case ActionAccept:
		return "Accept"
	case ActionDeny:
		return "Deny"
	case ActionPass:
		return "Pass"
	}
	return "Action-" + strconv.Itoa(int(a))
}

// ClusterPolicyRules are the rules of one ClusterNetworkPolicy.
//
// Evaluation, per direction and pod: the Admin policies of the pod in
// order, within one policy its rules in order, the first rule that matches
// decides (Accept, Deny, or Pass to the next tier); then the
// NetworkPolicies when any isolates the pod in that direction (allow if a
// rule matches, else deny); then the Baseline policies the same way; then
// allow. A connection passes only if both the source pod's egress and the
// destination pod's ingress allow it.
type ClusterPolicyRules struct {
	// Name is the object's name (ClusterNetworkPolicies have no
	// namespace).
	Name     string
	Tier     Tier
	Priority int32
	// Ingress rules match on the source address and destination port,
	// Egress rules on the destination address and port; rules that can
	// never match (every peer or every port invalid) are left out, the
	// others keep their position in Index.
	Ingress []ClusterRule
	Egress  []ClusterRule
	// Audit is set when the policy is in audit mode: no pod's Cluster
	// tiers name it, the pods' Audit lists do.
	Audit bool
}

// Rules returns the policy's rules for dir.
func (p *ClusterPolicyRules) Rules(dir Direction) []ClusterRule {
	if dir == Egress {
		return p.Egress
	}
	return p.Ingress
}

// ClusterPolicyBefore is the evaluation order within a tier: lower
// priority first; equal priorities (which the API leaves to the
// implementation) by name, ascending. Every agent thus orders a tie the
// same way, and the tie is reported in the policies' status.
func ClusterPolicyBefore(aPriority int32, aName string, bPriority int32, bName string) bool {
	if aPriority != bPriority {
		return aPriority < bPriority
	}
	return aName < bName
}

// ClusterRule is one rule of a ClusterNetworkPolicy.
type ClusterRule struct {
	// Name is the rule's name in the object, often "".
	Name string
	// Index is the rule's position in the object's ingress or egress list.
	Index  int
	Action Action
	// Peers and Ports match like those of a NetworkPolicy Rule. Named
	// ports (destinationNamedPort) name a PortSet whose entries hold the
	// protocol of each pod's container port of that name.
	Peers PeerMatch
	Ports PortMatch
}

// Label names the rule for people and metrics: "name ingress[idx]", with
// the rule's own name after a colon when it has one.
func (r *ClusterRule) Label(policy string, dir Direction) string {
	s := fmt.Sprintf("%s %s[%d]", policy, dir, r.Index)
	if r.Name != "" {
		s += ":" + r.Name
	}
	return s
}

// IngressIsolated reports whether any policy isolates the pod for ingress.
func (p *PodRules) IngressIsolated() bool { return len(p.Ingress) > 0 }

// EgressIsolated reports whether any policy isolates the pod for egress.
func (p *PodRules) EgressIsolated() bool { return len(p.Egress) > 0 }

// Isolating returns the keys of the policies that isolate the pod in dir.
func (p *PodRules) Isolating(dir Direction) []string {
	if dir == Egress {
		return p.Egress
	}
	return p.Ingress
}

// PolicyRules are the allow rules of one NetworkPolicy, per direction.
// Traffic of an isolated pod passes a direction when any rule of any of
// its policies for that direction matches.
type PolicyRules struct {
	// Key is "namespace/name".
	Key string
	// HasIngress and HasEgress are the policy's effective policyTypes.
	HasIngress, HasEgress bool
	// Ingress rules match on the source address and destination port.
	Ingress []Rule
	// Egress rules match on the destination address and destination port.
	Egress []Rule
	// Audit is set when the policy is in audit mode: no pod's Ingress or
	// Egress names it, the pods' Audit lists do.
	Audit bool
}

// Rules returns the policy's rules for dir.
func (p *PolicyRules) Rules(dir Direction) []Rule {
	if dir == Egress {
		return p.Egress
	}
	return p.Ingress
}

// Direction is ingress or egress.
type Direction uint8

// The two directions of a policy.
const (
	Ingress Direction = iota
	Egress
)

// Directions lists both directions, ingress first.
var Directions = [2]Direction{Ingress, Egress}

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// Rule matches a packet when its peer matches Peers and its destination
// port matches Ports.
type Rule struct {
	Peers PeerMatch
	Ports PortMatch
}

// PeerMatch selects the remote address: the source for ingress, the
// destination for egress.
type PeerMatch struct {
	// All matches every address (a rule with no from/to, or an empty peer
	// list). When All is false the peer matches when it is in any of Sets.
	All bool
	// Sets are IDs of AddrSets, ascending. Empty with All false matches
	// nothing.
	Sets []string
}

// PortMatch selects the destination protocol and port.
type PortMatch struct {
	// All matches every protocol and port (a rule with no ports).
	All bool
	// Ranges are numeric ports and endPort ranges, sorted by protocol then
	// port.
	Ranges []PortRange
	// Named is the ID of a PortSet of resolved named ports, or "". A packet
	// matches it when (destination address, protocol, destination port) is
	// one of the set's entries.
	Named string
}

// Protocol is an IP protocol number as NetworkPolicy uses them.
type Protocol uint8

// The protocols NetworkPolicy ports can name.
const (
	ProtocolTCP  Protocol = 6
	ProtocolUDP  Protocol = 17
	ProtocolSCTP Protocol = 132
)

// String returns the protocol's Kubernetes name.
func (p Protocol) String() string {
	switch p {
	case ProtocolTCP:
		return "TCP"
	case ProtocolUDP:
		return "UDP"
	case ProtocolSCTP:
		return "SCTP"
	}
	return "proto-" + strconv.Itoa(int(p))
}

// PortRange is a protocol with an inclusive port range; First == Last for a
// single port.
type PortRange struct {
	Protocol    Protocol
	First, Last uint16
}

// AddrSet is a set of peer addresses. Its ID is derived from what defines
// membership (the selectors, or the ipBlock), never from the members, so a
// pod joining or leaving changes the elements of a set whose ID stays.
type AddrSet struct {
	// ID is stable and unique within a Model.
	ID string
	// Description says in words where the set comes from, for people
	// reading the ruleset.
	Description string
	// Addrs are single addresses (pod IPs), ascending, both families mixed.
	Addrs []netip.Addr
	// Ranges are inclusive address ranges (ipBlocks minus their excepts),
	// ascending, non-overlapping, both families mixed.
	Ranges []AddrRange
	// Version, when not nil, stands for the content: two sets with the
	// same Version have the same Description, Addrs and Ranges, and
	// neither slice is ever changed. The Builder gives one to each selector
	// peer set it makes and hands the same set to the next model while
	// its namespaces do not change, so a compiler can tell an unchanged
	// set by one pointer comparison instead of comparing (or copying)
	// every address. BuildModel and hand-made models leave it nil.
	Version *SetVersion
	// Delta, when not nil, says how this set differs from the set of
	// version Delta.From (always with the same ID and Description, and no
	// Ranges): a compiler that compiled that version may apply the delta
	// to what it made instead of reading Addrs, so a pod change costs the
	// addresses it moves, not the size of the set. Addrs stays the whole
	// content: a consumer that ignores Delta is still right.
	Delta *AddrSetDelta
}

// AddrSetDelta is the difference between two versions of an AddrSet.
type AddrSetDelta struct {
	From *SetVersion
	// Added are in the new set and not in the old, Removed the reverse;
	// both ascending, at least one of them not empty.
	Added, Removed []netip.Addr
}

// SetVersion identifies the content of an AddrSet (see AddrSet.Version).
type SetVersion struct{ _ byte } // not zero-sized: every one has its own address

// AddrRange is an inclusive range of addresses of one family.
type AddrRange struct {
	First, Last netip.Addr
}

// PortSet holds named ports resolved to numbers, per address: ingress named
// ports are resolved on the local destination pod, egress ones on each peer
// pod, so the number can differ from pod to pod.
type PortSet struct {
	// ID is stable and unique within a Model.
	ID string
	// Description says in words where the set comes from.
	Description string
	// Entries are sorted by address, protocol, port.
	Entries []PortEntry
}

// PortEntry is one destination address with one resolved port.
type PortEntry struct {
	Addr     netip.Addr
	Protocol Protocol
	Port     uint16
}
