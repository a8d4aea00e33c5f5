// Package reference is the reference evaluator: it decides whether one
// connection is allowed by reading the Kubernetes objects themselves
// (corev1.Pod, corev1.Namespace, corev1.Node, networkingv1.NetworkPolicy,
// and ClusterNetworkPolicy of sigs.k8s.io/network-policy-api v1beta1) the
// way their API references define them, packet by packet and rule by rule,
// written for clarity and not for speed.
//
// Each side of a connection (egress of the source pod, ingress of the
// destination pod) goes through the tiers in order: Admin
// ClusterNetworkPolicies (lowest priority first, rules in their order, the
// first matching rule decides), then NetworkPolicies (if any selects the
// pod for that direction, they decide), then Baseline
// ClusterNetworkPolicies, then the default: allowed. Accept and Deny are
// final; Pass ends its tier (Admin to NetworkPolicy, Baseline to the
// default). A connection passes when both sides allow it.
//
// It is the oracle the model builder (selectors) and the compiled nftables
// table (nft) are tested against, and what `nftpol explain` prints. To be
// an oracle it must be a second, independent reading of the API: it
// imports nothing from nftpol and shares no code with the builder, not the
// parsing of ports, ipBlocks or policyTypes, not the reading of pod
// addresses and named ports, not the index of namespaces. The only
// interpretation it borrows is upstream's own, metav1.LabelSelectorAsSelector.
//
// Where the API reference is silent, these are the rules (the builder
// states the same ones in selectors' doc.go and implements them on its own):
//
//   - A pod is an endpoint (policies select it, peers match it, an address
//     belongs to it) when it is not on the host network, not terminal
//     (phase Succeeded or Failed) and has an address.
//   - When several endpoint pods claim one address (a stale object while an
//     address is reused), the newest (latest creationTimestamp) owns it,
//     ties broken by namespace then name ascending; only the owner's labels
//     and named ports count for that address.
//   - A connection from a pod to its own address never leaves the pod:
//     nothing can deny it.
//   - Traffic from the destination pod's own node is always allowed
//     ingress (kubelet probes), as the API reference says.
//   - Parts of a policy the API server would reject match nothing: a peer
//     with ipBlock and a selector or with neither, an invalid selector, a
//     cidr that does not parse, endPort with a named port or without a
//     port, a port outside 1-65535 or a range ending before it starts.
//     An except that does not parse or is not inside its cidr excludes
//     nothing; the rest of its block still applies.
//   - ClusterNetworkPolicies of one tier with equal priorities are taken
//     in name order (the API leaves the order to the implementation).
//   - A domainNames peer matches nothing: a packet filter cannot match
//     names (the API allows them only in Accept rules, so this only ever
//     accepts less).
//   - A nodes peer matches the InternalIP and ExternalIP addresses in the
//     selected Nodes' status.addresses.
//   - Traffic from the destination pod's own node is allowed ingress in
//     every tier, as for NetworkPolicy.
//   - ClusterNetworkPolicy parts the API server would reject: a peer with
//     no field fails closed as the type documentation says (an Accept
//     rule matches nothing; a Deny or Pass rule denies everything), and
//     so does an action other than Accept, Deny and Pass (the rule denies
//     everything); a peer with several fields, a subject with no field or
//     both, a protocol entry with no field or several, a port with
//     neither or both of number and range, a number outside 1-65535, a
//     range ending before it starts and a networks entry that does not
//     parse match nothing; a networks entry with host bits is its
//     network; a protocol without destinationPort matches every port of
//     the protocol; a policy of a tier other than Admin and Baseline, or
//     with a priority outside 0-1000, applies nowhere.
package reference
