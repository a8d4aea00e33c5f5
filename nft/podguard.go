package nft

import (
	"fmt"

	"github.com/nftpol/nftpol/selectors"
)

// The guard of pod addresses (selectors.PodAddrGuard): an address of the
// node's pod CIDRs that no pod of this node has yet — a pod whose CNI ADD
// gave it an address the agent has not committed — is dropped on the pod
// side of every base chain: destination towards a pod, source from a pod.
// Its address joins SetPodAddrs in the transaction that installs its
// verdict map elements, so there is no instant where it is reachable
// unjudged. Addresses local to the node (a bridge's gateway inside the pod
// CIDR) are exempt: they are the node, not a pod.
const (
	SetPodCIDRsV4 = "pod-cidrs-v4"
	SetPodCIDRsV6 = "pod-cidrs-v6"
	SetPodAddrsV4 = "pod-addrs-v4"
	SetPodAddrsV6 = "pod-addrs-v6"
)

func podCIDRsSet(family int) string {
	if family == 6 {
		return SetPodCIDRsV6
	}
	return SetPodCIDRsV4
}

func podAddrsSet(family int) string {
	if family == 6 {
		return SetPodAddrsV6
	}
	return SetPodAddrsV4
}

// addPodGuardSets adds the guard's sets to rs; nothing when g has no pod
// CIDRs.
func addPodGuardSets(rs *Ruleset, g selectors.PodAddrGuard) {
	if len(g.PodCIDRs) == 0 {
		return
	}
	for _, family := range []int{4, 6} {
		cidrs := &setSpec{name: podCIDRsSet(family), kind: kindInterval4,
			comment: fmt.Sprintf("this node's pod CIDRs (IPv%d)", family)}
		addrs := &setSpec{name: podAddrsSet(family), kind: kindAddr4,
			comment: fmt.Sprintf("this node's pods known to the agent (IPv%d)", family)}
		if family == 6 {
			cidrs.kind, addrs.kind = kindInterval6, kindAddr6
		}
		for _, r := range g.Ranges() {
			if familyOf(r.First) == family {
				cidrs.elems.put(rangeKey(r.First, r.Last), "")
			}
		}
		for _, a := range g.Known {
			if familyOf(a) == family {
				addrs.elems.put(addrKey(a), "")
			}
		}
		rs.sets[cidrs.name], rs.sets[addrs.name] = cidrs, addrs
	}
}

// podGuardRules are the guard's rules of a base chain for one family,
// placed before its verdict map; none when g has no pod CIDRs.
func podGuardRules(g selectors.PodAddrGuard, bc baseChain, family int) []ruleSpec {
	if len(g.PodCIDRs) == 0 {
		return nil
	}
	podSide := fieldDaddr
	if bc.dir == selectors.Egress {
		podSide = fieldSaddr
	}
	return []ruleSpec{{family: family, setOn: podSide, set: podCIDRsSet(family), notSet: podAddrsSet(family),
		notLocal: podSide, counter: true, verdict: verdictDrop, comment: "pod address not committed yet"}}
}
