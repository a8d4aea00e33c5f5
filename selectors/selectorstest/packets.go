package selectorstest

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/reference"
)

// Packet is the first packet of a connection, as the compiled forms see
// it: protocol numbers, as on the wire.
type Packet struct {
	Src, Dst netip.Addr
	Protocol selectors.Protocol
	Port     uint16 // destination port
}

func (p Packet) String() string {
	return fmt.Sprintf("%s -> %s %s/%d", p.Src, p.Dst, p.Protocol, p.Port)
}

// Reference is the packet as the reference evaluator takes it.
func (p Packet) Reference() reference.Packet {
	proto := map[selectors.Protocol]corev1.Protocol{
		selectors.ProtocolTCP: corev1.ProtocolTCP, selectors.ProtocolUDP: corev1.ProtocolUDP, selectors.ProtocolSCTP: corev1.ProtocolSCTP,
	}[p.Protocol]
	return reference.Packet{Src: p.Src, Dst: p.Dst, Protocol: proto, Port: int32(p.Port)}
}

// Packets lists the first packets to decide in cl: between every two
// addresses of its pods (any pod, endpoint or not) and nodes of one family,
// an address to itself included, TCP, UDP and SCTP, to ports 80, 81 and 82
// (the ports RandomCluster's policies speak of, and one its pods never
// name).
func Packets(cl *reference.Cluster) []Packet {
	var addrs []netip.Addr
	seen := map[netip.Addr]bool{}
	add := func(s string) {
		if a, err := netip.ParseAddr(s); err == nil && !seen[a.Unmap()] {
			seen[a.Unmap()] = true
			addrs = append(addrs, a.Unmap())
		}
	}
	for _, p := range cl.Pods {
		add(p.Status.PodIP)
		for _, ip := range p.Status.PodIPs {
			add(ip.IP)
		}
	}
	for _, node := range Nodes() {
		for _, a := range cl.NodeAddresses[node] {
			add(a.String())
		}
	}
	var out []Packet
	for _, src := range addrs {
		for _, dst := range addrs {
			if src.Is4() != dst.Is4() {
				continue
			}
			for _, proto := range []selectors.Protocol{selectors.ProtocolTCP, selectors.ProtocolUDP, selectors.ProtocolSCTP} {
				for _, port := range []uint16{80, 81, 82} {
					out = append(out, Packet{Src: src, Dst: dst, Protocol: proto, Port: port})
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

// Places maps the addresses of the pod endpoints and nodes of cl to where
// they live; any other address (a host-network or finished pod's) is
// outside the cluster as far as policies are concerned. An address two
// pods claim lives where its owner (reference.Cluster.OwnerOf) runs.
func Places(cl *reference.Cluster) map[netip.Addr]Place {
	out := map[netip.Addr]Place{}
	for _, p := range cl.Pods {
		for _, a := range reference.Addresses(p) {
			if owner := cl.OwnerOf(a); owner != nil {
				out[a] = Place{Node: owner.Spec.NodeName}
			}
		}
	}
	for node, addrs := range cl.NodeAddresses {
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
// is a node itself. A packet to its own source address never leaves its
// pod or node.
func Hops(places map[netip.Addr]Place, p Packet) []Hop {
	if p.Src.Unmap() == p.Dst.Unmap() {
		return nil
	}
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

// Describe prints the objects of cl that decide packets, for failure
// messages: pods with their addresses, phase and ports, namespaces with
// their labels, policies with their specs.
func Describe(cl *reference.Cluster) string {
	var b strings.Builder
	for _, ns := range cl.Namespaces {
		fmt.Fprintf(&b, "\nnamespace %s %v", ns.Name, ns.Labels)
	}
	for _, p := range cl.Pods {
		var ports []string
		for _, c := range p.Spec.Containers {
			for _, cp := range c.Ports {
				ports = append(ports, fmt.Sprintf("%s=%s/%d", cp.Name, cp.Protocol, cp.ContainerPort))
			}
		}
		for _, c := range p.Spec.InitContainers {
			for _, cp := range c.Ports {
				ports = append(ports, fmt.Sprintf("init(restart=%v):%s=%s/%d", c.RestartPolicy != nil, cp.Name, cp.Protocol, cp.ContainerPort))
			}
		}
		fmt.Fprintf(&b, "\npod %s/%s node=%s %v ip=%s ips=%v phase=%s host=%v created=%s ports=%v",
			p.Namespace, p.Name, p.Spec.NodeName, p.Labels, p.Status.PodIP, p.Status.PodIPs, p.Status.Phase, p.Spec.HostNetwork,
			p.CreationTimestamp.Format("15:04"), ports)
	}
	for _, np := range cl.Policies {
		fmt.Fprintf(&b, "\npolicy %s/%s: %+v", np.Namespace, np.Name, np.Spec)
	}
	for _, n := range cl.Nodes {
		fmt.Fprintf(&b, "\nnode %s %v %v", n.Name, n.Labels, n.Status.Addresses)
	}
	for _, cnp := range cl.ClusterPolicies {
		fmt.Fprintf(&b, "\nclusternetworkpolicy %s: %s", cnp.Name, describeClusterPolicy(cnp))
	}
	return b.String()
}

// describeClusterPolicy prints the spec as JSON: its pointers (ports,
// selectors) would print as addresses with %+v.
func describeClusterPolicy(cnp *policyv1beta1.ClusterNetworkPolicy) string {
	data, err := json.Marshal(cnp.Spec)
	if err != nil {
		return fmt.Sprintf("%+v", cnp.Spec)
	}
	return string(data)
}
