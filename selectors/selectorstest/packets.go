package selectorstest

import (
	"net/netip"

	"github.com/nftpol/nftpol/selectors"
)

// Packets lists the first packets to decide in s: between every two
// distinct addresses of its pods and nodes of one family, TCP and UDP, to
// ports 80, 81 and 82 (the ports RandomCluster's policies speak of, and one
// they never name).
func Packets(s *selectors.State) []selectors.Packet {
	var addrs []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(a netip.Addr) {
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	for _, p := range s.Pods {
		for _, a := range p.IPs {
			add(a)
		}
	}
	for _, node := range Nodes() {
		for _, a := range s.NodeIPs[node] {
			add(a)
		}
	}
	var out []selectors.Packet
	for _, src := range addrs {
		for _, dst := range addrs {
			if src == dst || src.Is4() != dst.Is4() {
				continue
			}
			for _, proto := range []selectors.Protocol{selectors.ProtocolTCP, selectors.ProtocolUDP} {
				for _, port := range []uint16{80, 81, 82} {
					out = append(out, selectors.Packet{Src: src, Dst: dst, Protocol: proto, Port: port})
				}
			}
		}
	}
	return out
}

// Place says where an address lives: on which node, and whether it is that
// node's own address or a pod endpoint's on it.
type Place struct {
	Node   string
	IsNode bool
}

// Places maps the addresses of the pod endpoints and nodes of s to where
// they live; any other address (a host-network or finished pod's) is
// outside the cluster as far as policies are concerned.
func Places(s *selectors.State) map[netip.Addr]Place {
	out := map[netip.Addr]Place{}
	for _, p := range s.Pods {
		if p.IsEndpoint() {
			for _, a := range p.IPs {
				out[a] = Place{Node: p.NodeName}
			}
		}
	}
	for node, addrs := range s.NodeIPs {
		for _, a := range addrs {
			out[a] = Place{Node: node, IsNode: true}
		}
	}
	return out
}

// Hook is a netfilter hook a packet passes on a node.
type Hook string

// The hooks a routed pod network takes a packet through: forward on a node
// that routes it between its pods and the wire, input on the node it is
// addressed to. (Output, where a node's own packets start, is no hook of
// ours: traffic from a node to its pods is always allowed.)
const (
	HookForward Hook = "forward"
	HookInput   Hook = "input"
)

// Hop is one traversal of a node's netfilter hook.
type Hop struct {
	Node string
	Hook Hook
}

// Hops lists, in order, the hooks a packet passes in a routed pod network
// (pods behind point-to-point links, nodes routing between them, as in the
// e2e testbed and kindnet): forward on the source pod's node, then on the
// destination's node if it is another one, or input where the destination
// is a node itself.
func Hops(places map[netip.Addr]Place, p selectors.Packet) []Hop {
	src, srcIn := places[p.Src.Unmap()]
	dst, dstIn := places[p.Dst.Unmap()]
	arrive := func(node string) Hop {
		if dst.IsNode {
			return Hop{Node: node, Hook: HookInput}
		}
		return Hop{Node: node, Hook: HookForward}
	}
	var hops []Hop
	switch {
	case srcIn && !src.IsNode && dstIn && dst.Node == src.Node:
		return []Hop{arrive(src.Node)}
	case srcIn && !src.IsNode:
		hops = append(hops, Hop{Node: src.Node, Hook: HookForward})
	case srcIn && src.IsNode && dstIn && dst.Node == src.Node:
		return nil // from a node to itself or its own pods: output only
	}
	if dstIn {
		hops = append(hops, arrive(dst.Node))
	}
	return hops
}
