package testbed

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/test/kerneltest"
)

// Options shape a Bed.
type Options struct {
	// Prefix names every namespace the Bed creates ("<prefix>-n1", ...).
	// Use one prefix per test package so parallel packages never collide.
	Prefix string
	// Nodes is the number of simulated nodes (default 2).
	Nodes int
	// Ports are served by every pod on TCP and UDP (default 80 and 81);
	// each is a named container port "serve-<port>-tcp" / "-udp".
	Ports []int
}

// Node is a simulated node: a network namespace that routes for its pods.
type Node struct {
	Name string
	// NetNSPath is the namespace to pass to an agent's --netns.
	NetNSPath string
	// IPv4 and IPv6 are the node's addresses on the link between nodes.
	IPv4, IPv6 netip.Addr
	index      int
	netns      string
}

// PodSpec describes a pod to create.
type PodSpec struct {
	Namespace, Name, Node string
	Labels                map[string]string
	// ReuseAddrsOf gives the new pod the addresses of a pod deleted
	// before ("namespace/name"), as a CNI may hand a freed IP to the next
	// pod. The deleted pod must have been on the same node.
	ReuseAddrsOf string
}

// Pod is a pod the Bed created: a network namespace with servers.
type Pod struct {
	Namespace, Name, Node string
	IPv4, IPv6            netip.Addr
	NetNSPath             string
	netns                 string
	servers               *servers
}

// Key returns "namespace/name".
func (p *Pod) Key() string { return p.Namespace + "/" + p.Name }

// Addr returns the pod's address of a family (4 or 6).
func (p *Pod) Addr(family int) netip.Addr {
	if family == 6 {
		return p.IPv6
	}
	return p.IPv4
}

// Bed is a set of simulated nodes and pods with their API objects.
type Bed struct {
	cp    *ControlPlane
	opts  Options
	Nodes []*Node

	mu      sync.Mutex
	pods    map[string]*Pod
	freed   map[string]*Pod // deleted pods, for ReuseAddrsOf
	nextPod int
	closers []func()
}

// New creates the nodes and their API objects. Close removes everything.
func New(ctx context.Context, cp *ControlPlane, opts Options) (*Bed, error) {
	if opts.Prefix == "" {
		return nil, errors.New("testbed: a prefix is required")
	}
	if opts.Nodes <= 0 {
		opts.Nodes = 2
	}
	if opts.Nodes > 9 {
		return nil, errors.New("testbed: at most 9 nodes")
	}
	if len(opts.Ports) == 0 {
		opts.Ports = []int{80, 81}
	}
	killAgentsWithPrefix(opts.Prefix)
	kerneltest.RemoveLeftovers(opts.Prefix)
	b := &Bed{cp: cp, opts: opts, pods: map[string]*Pod{}, freed: map[string]*Pod{}}
	if err := b.createNodes(ctx); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

// NewT creates a Bed for a test; it is removed when the test ends.
func NewT(t testing.TB, cp *ControlPlane, opts Options) *Bed {
	t.Helper()
	b, err := New(context.Background(), cp, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func (b *Bed) onClose(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closers = append(b.closers, f)
}

// Close removes every pod, node, listener and namespace, in reverse order
// of creation. It is safe to call twice.
func (b *Bed) Close() {
	b.mu.Lock()
	closers := b.closers
	b.closers = nil
	b.mu.Unlock()
	for i := len(closers) - 1; i >= 0; i-- {
		closers[i]()
	}
	kerneltest.RemoveLeftovers(b.opts.Prefix)
}

func (b *Bed) createNodes(ctx context.Context) error {
	for i := 1; i <= b.opts.Nodes; i++ {
		n := &Node{
			Name:  fmt.Sprintf("%s-node-%d", b.opts.Prefix, i),
			IPv4:  netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}),
			IPv6:  netip.MustParseAddr(fmt.Sprintf("2001:db8::%d", i)),
			index: i,
			netns: fmt.Sprintf("%s-n%d", b.opts.Prefix, i),
		}
		n.NetNSPath = netnsPath(n.netns)
		if err := ip("netns", "add", n.netns); err != nil {
			return err
		}
		b.onClose(func() { _ = ip("netns", "delete", n.netns) })
		for _, kv := range [][2]string{
			{"net.ipv4.ip_forward", "1"},
			{"net.ipv6.conf.all.forwarding", "1"},
			{"net.ipv6.conf.default.accept_dad", "0"},
		} {
			if err := setSysctl(n.NetNSPath, kv[0], kv[1]); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
		if err := ip("-n", n.netns, "link", "set", "lo", "up"); err != nil {
			return err
		}
		b.Nodes = append(b.Nodes, n)
	}
	// A full mesh of node links, each a veth pair with a /24 and /64.
	for i, a := range b.Nodes {
		for _, c := range b.Nodes[i+1:] {
			if err := b.linkNodes(a, c); err != nil {
				return err
			}
		}
	}
	for _, n := range b.Nodes {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: map[string]string{"kubernetes.io/hostname": n.Name}},
		}
		created, err := b.cp.Clientset.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating node %s: %w", n.Name, err)
		}
		if err == nil {
			created.Status.Addresses = []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: n.IPv4.String()},
				{Type: corev1.NodeInternalIP, Address: n.IPv6.String()},
			}
			if _, err := b.cp.Clientset.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("writing status of node %s: %w", n.Name, err)
			}
		}
		name := n.Name
		b.onClose(func() {
			_ = b.cp.Clientset.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
		})
	}
	return nil
}

// podCIDRs of node i: 10.244.i.0/24 and fd00:10:244:i::/64.
func podPrefixes(node int) (netip.Prefix, netip.Prefix) {
	return netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", node)), netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%d::/64", node))
}

func (b *Bed) linkNodes(a, c *Node) error {
	ifA, ifC := fmt.Sprintf("to-n%d", c.index), fmt.Sprintf("to-n%d", a.index)
	if err := ip("link", "add", ifA, "netns", a.netns, "type", "veth", "peer", "name", ifC, "netns", c.netns); err != nil {
		return err
	}
	for _, end := range []struct {
		self, peer *Node
		ifname     string
	}{{a, c, ifA}, {c, a, ifC}} {
		ns := end.self.netns
		steps := [][]string{
			{"-n", ns, "addr", "add", end.self.IPv4.String() + "/32", "dev", end.ifname},
			{"-n", ns, "addr", "add", end.self.IPv6.String() + "/128", "dev", end.ifname, "nodad"},
			{"-n", ns, "link", "set", end.ifname, "up"},
			{"-n", ns, "route", "add", end.peer.IPv4.String() + "/32", "dev", end.ifname, "scope", "link"},
			{"-n", ns, "-6", "route", "add", end.peer.IPv6.String() + "/128", "dev", end.ifname},
		}
		v4, v6 := podPrefixes(end.peer.index)
		steps = append(steps,
			[]string{"-n", ns, "route", "add", v4.String(), "via", end.peer.IPv4.String(), "dev", end.ifname},
			[]string{"-n", ns, "-6", "route", "add", v6.String(), "via", end.peer.IPv6.String(), "dev", end.ifname})
		for _, s := range steps {
			if err := ip(s...); err != nil {
				return err
			}
		}
	}
	return nil
}

// Node returns the node with the given name, or nil.
func (b *Bed) Node(name string) *Node {
	for _, n := range b.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// Pod returns the pod "namespace/name", or nil.
func (b *Bed) Pod(key string) *Pod {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pods[key]
}

// Pods returns every pod, sorted by key.
func (b *Bed) Pods() []*Pod {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]*Pod, 0, len(b.pods))
	for _, p := range b.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// EnsureNamespace creates a namespace or replaces its labels.
func (b *Bed) EnsureNamespace(ctx context.Context, name string, labels map[string]string) error {
	nsClient := b.cp.Clientset.CoreV1().Namespaces()
	ns, err := nsClient.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = nsClient.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("creating namespace %s: %w", name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading namespace %s: %w", name, err)
	}
	ns.Labels = map[string]string{"kubernetes.io/metadata.name": name}
	for k, v := range labels {
		ns.Labels[k] = v
	}
	if _, err := nsClient.Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("relabeling namespace %s: %w", name, err)
	}
	return nil
}

// SetPodLabels replaces the labels of a pod's API object.
func (b *Bed) SetPodLabels(ctx context.Context, ns, name string, labels map[string]string) error {
	pods := b.cp.Clientset.CoreV1().Pods(ns)
	pod, err := pods.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading pod %s/%s: %w", ns, name, err)
	}
	pod.Labels = labels
	if _, err := pods.Update(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("relabeling pod %s/%s: %w", ns, name, err)
	}
	return nil
}

// FlushNeighbors empties the ARP and neighbour caches of every node and
// pod, so the next packets resolve their neighbours again under whatever
// rules are in force (a stale cache can hide a rule that breaks address
// resolution).
func (b *Bed) FlushNeighbors() error {
	var names []string
	for _, n := range b.Nodes {
		names = append(names, n.netns)
	}
	for _, p := range b.Pods() {
		names = append(names, p.netns)
	}
	for _, ns := range names {
		if err := ip("-n", ns, "neigh", "flush", "all"); err != nil {
			return err
		}
	}
	return nil
}

// ServeOnNodes starts the TCP and UDP servers of Options.Ports in every
// node's namespace, answering with the node's name, so that tests can
// probe traffic from pods to nodes (policies with node peers). They stop
// when the Bed closes.
func (b *Bed) ServeOnNodes() error {
	for _, n := range b.Nodes {
		srv, err := startServers(n.NetNSPath, n.Name, b.opts.Ports, n.IPv4.String(), n.IPv6.String())
		if err != nil {
			return fmt.Errorf("serving on node %s: %w", n.Name, err)
		}
		b.onClose(srv.close)
	}
	return nil
}
