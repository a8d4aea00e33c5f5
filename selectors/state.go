package selectors

import (
	"net/netip"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Pod is the part of a pod the policy model reads. The agent's cache keeps
// only these fields (see the pod cache transform in controllers).
type Pod struct {
	Namespace, Name, NodeName string
	Labels                    map[string]string
	// IPs are the pod's addresses; IPv4-mapped IPv6 addresses are unmapped.
	IPs         []netip.Addr
	HostNetwork bool
	// Terminal is true in phase Succeeded or Failed: the pod's IP may
	// already belong to another pod.
	Terminal bool
	Ports    []NamedPort
	// Created is the pod's creationTimestamp: when two pods claim one
	// address, the newer owns it (see AddressOwners).
	Created time.Time
}

// Key returns "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// IsEndpoint reports whether policies can select the pod and its
// addresses can be members of peer sets: not host-networked (it would share
// the node's address), not terminated, and with an address.
func (p *Pod) IsEndpoint() bool {
	return !p.HostNetwork && !p.Terminal && len(p.IPs) > 0
}

// NamedPort is a container port that has a name.
type NamedPort struct {
	Name     string
	Protocol Protocol
	Port     uint16
}

// Namespace is the part of a namespace the model reads.
type Namespace struct {
	Name   string
	Labels map[string]string
}

// State is the cluster as the model sees it.
type State struct {
	Pods       []*Pod
	Namespaces []*Namespace
	Policies   []*networkingv1.NetworkPolicy
	// ClusterPolicies are the ClusterNetworkPolicies; nil when the CRD
	// is not installed.
	ClusterPolicies []*cnpv1beta1.ClusterNetworkPolicy
	// Nodes are needed only for the nodes peers of ClusterNetworkPolicies.
	Nodes []*Node
}

// Node is the part of a node the model reads: its labels and addresses
// (what a ClusterNetworkPolicy nodes peer matches).
type Node struct {
	Name   string
	Labels map[string]string
	// IPs are the node's InternalIP and ExternalIP addresses, ascending.
	IPs []netip.Addr
}

// NodeFromObject converts an API node; addresses that do not parse, and
// host names, are left out.
func NodeFromObject(n *corev1.Node) *Node {
	out := &Node{Name: n.Name, Labels: n.Labels}
	for _, a := range n.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil {
			out.IPs = append(out.IPs, ip.Unmap().WithZone(""))
		}
	}
	out.IPs = sortAddrs(out.IPs)
	return out
}

// Problem is a part of a policy that cannot be enforced as written; that
// part matches nothing, the rest of the policy is enforced.
type Problem struct {
	// Policy is "namespace/name" of a NetworkPolicy, or the name of a
	// ClusterNetworkPolicy when Cluster is set.
	Policy  string
	Cluster bool
	Reason  string
}

// metadataNameLabel is set by the API server on every namespace.
const metadataNameLabel = "kubernetes.io/metadata.name"

// PodFromObject converts an API pod. Addresses that do not parse are
// dropped; the result is never nil for a non-nil pod.
func PodFromObject(p *corev1.Pod) *Pod {
	out := &Pod{
		Namespace:   p.Namespace,
		Name:        p.Name,
		NodeName:    p.Spec.NodeName,
		Labels:      p.Labels,
		HostNetwork: p.Spec.HostNetwork,
		Terminal:    p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed,
		Created:     p.CreationTimestamp.Time,
	}
	seen := map[netip.Addr]bool{}
	addIP := func(s string) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return
		}
		a = a.Unmap().WithZone("")
		if !seen[a] {
			seen[a] = true
			out.IPs = append(out.IPs, a)
		}
	}
	for _, ip := range p.Status.PodIPs {
		addIP(ip.IP)
	}
	if len(p.Status.PodIPs) == 0 && p.Status.PodIP != "" {
		addIP(p.Status.PodIP)
	}
	sort.Slice(out.IPs, func(i, j int) bool { return out.IPs[i].Less(out.IPs[j]) })

	addPorts := func(c *corev1.Container) {
		for _, cp := range c.Ports {
			if cp.Name == "" || cp.ContainerPort <= 0 || cp.ContainerPort > 65535 {
				continue
			}
			proto, ok := protocolOf(cp.Protocol)
			if !ok {
				continue
			}
			out.Ports = append(out.Ports, NamedPort{Name: cp.Name, Protocol: proto, Port: uint16(cp.ContainerPort)})
		}
	}
	for i := range p.Spec.Containers {
		addPorts(&p.Spec.Containers[i])
	}
	for i := range p.Spec.InitContainers {
		c := &p.Spec.InitContainers[i]
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			addPorts(c)
		}
	}
	return out
}

// NamespaceFromObject converts an API namespace.
func NamespaceFromObject(ns *corev1.Namespace) *Namespace {
	return &Namespace{Name: ns.Name, Labels: ns.Labels}
}

// protocolOf maps a Kubernetes protocol name; empty means TCP.
func protocolOf(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case "", corev1.ProtocolTCP:
		return ProtocolTCP, true
	case corev1.ProtocolUDP:
		return ProtocolUDP, true
	case corev1.ProtocolSCTP:
		return ProtocolSCTP, true
	}
	return 0, false
}

// lookupPort resolves a port name on a pod.
func (p *Pod) lookupPort(name string, proto Protocol) (uint16, bool) {
	for _, np := range p.Ports {
		if np.Name == name && np.Protocol == proto {
			return np.Port, true
		}
	}
	return 0, false
}

// AddressOwners returns the endpoint pod that owns each address of the
// endpoint pods. An address is normally one pod's; when several claim it
// (the object of a finished or deleted pod not yet updated while its
// address is reused), the newest owns it: the latest Created, ties broken
// by namespace then name ascending. Only the owner's labels and named
// ports count for the address, whatever order the pods come in.
func AddressOwners(pods []*Pod) map[netip.Addr]*Pod {
	n := 0
	for _, p := range pods {
		if p != nil {
			n += len(p.IPs)
		}
	}
	// Sized once: at 100k dual-stack pods, growing it would be most of
	// its cost.
	owners := make(map[netip.Addr]*Pod, n)
	for _, p := range pods {
		if p == nil || !p.IsEndpoint() {
			continue
		}
		for _, ip := range p.IPs {
			if o, ok := owners[ip]; !ok || p.claimsBefore(o) {
				owners[ip] = p
			}
		}
	}
	return owners
}

// claimsBefore reports whether p's claim on an address beats q's.
func (p *Pod) claimsBefore(q *Pod) bool {
	if !p.Created.Equal(q.Created) {
		return p.Created.After(q.Created)
	}
	if p.Namespace != q.Namespace {
		return p.Namespace < q.Namespace
	}
	return p.Name < q.Name
}
