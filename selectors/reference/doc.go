// Package reference is the reference evaluator: it decides whether one
// connection is allowed by reading the Kubernetes objects themselves
// (corev1.Pod, corev1.Namespace, networkingv1.NetworkPolicy) the way the
// API reference in k8s.io/api networking/v1 defines them, packet by packet
// and rule by rule, written for clarity and not for speed.
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
package reference
