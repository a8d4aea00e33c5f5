// Package selectors owns the NetworkPolicy and ClusterNetworkPolicy
// semantics the agent enforces: indexes of pods, namespaces and policies,
// the resolution of pod and namespace selectors, ipBlocks, networks, node
// selectors and named ports into addresses and ports, and the Model one
// node enforces (model.go documents the ClusterNetworkPolicy part: tiers
// per pod in evaluation order, rules with their actions). cnp.go parses a
// ClusterNetworkPolicy, cnpbuild.go resolves it.
//
// The oracle it is tested against is not here: selectors/reference reads
// the API objects on its own, shares no code with this package, and is
// what `nftpol explain` prints.
//
// An address that several endpoint pods claim (the object of a finished
// or deleted pod not yet updated while its address is reused) belongs to
// one of them, never to whichever the maps happened to yield first: the
// pod created last (newest creationTimestamp), ties broken by namespace,
// then name, ascending. Pods on the host network, terminal pods and pods
// without an address never claim one. Only the owner's labels and named
// ports count for the address: in the verdict-map elements of local pods,
// in peer sets and in named-port sets (see AddressOwners).
//
// Set IDs and descriptions are made only of what defines membership (the
// selectors and their namespace, the ipBlock, the named ports and the pods
// they resolve on), never of the policy that happened to build the set
// first, so deleting one of two policies that share a set leaves it as it
// was.
//
// It is pure Go: no I/O, no nftables. nft/ compiles the Model; controllers/
// feeds the indexes from the API server.
package selectors
