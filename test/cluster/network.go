package cluster

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"

	"github.com/nftpol/nftpol/test/kerneltest"

	"github.com/nftpol/nftpol/test/netnskubelet"
)

// The addressing, dual stack with IPv4 primary: nodes share one link,
// 192.0.2.0/24 (TEST-NET-1) and 2001:db8::/64 (documentation range), never
// routed anywhere real; node i is 192.0.2.i and 2001:db8::i with pod CIDRs
// 10.244.i.0/24 and fd00:10:244:i::/64.
// Pod CIDRs are fixed by the launcher and registered by the kubelets
// (spec.podCIDR), so the routes between nodes are known before any pod
// exists: every node routes each other node's pod CIDR via that node's
// address, as a routing CNI (Calico without encapsulation, kube-router)
// would program them.
const (
	clusterCIDRs = "10.244.0.0/16,fd00:10:244::/48"
	serviceCIDRs = "10.0.0.0/24,fd00:10:96::/112"
)

// The control plane's addresses on the shared link: the "<prefix>-cp"
// namespace holds them and relays to the API server on the root
// namespace's loopback. The API server advertises the IPv4 one as the
// endpoint of the `kubernetes` Service, so in-cluster clients reach it
// through kube-proxy as in any cluster; the nodes route the Service
// ranges to it, as they would to their gateway, so that connections the
// node itself opens to a ClusterIP have a route before kube-proxy's DNAT.
var (
	controlPlaneIPs = []netip.Prefix{
		netip.MustParsePrefix("192.0.2.254/24"),
		netip.MustParsePrefix("2001:db8::fe/64"),
	}
	serviceRanges = []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/24"),
		netip.MustParsePrefix("fd00:10:96::/112"),
	}
	// kubernetesServiceIPs are the first address of each Service range,
	// which the API server gives the `kubernetes` Service.
	kubernetesServiceIPs = []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("fd00:10:96::1")}
)

// nodeIPs are node i's addresses on the shared link, with their prefix
// lengths there.
func nodeIPs(i int) []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix(fmt.Sprintf("192.0.2.%d/24", i)),
		netip.MustParsePrefix(fmt.Sprintf("2001:db8::%x/64", i)),
	}
}

func podCIDRs(i int) []netip.Prefix {
	return []netip.Prefix{
		netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)),
		netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::/64", i)),
	}
}

func ip(args ...string) error { return kerneltest.IP(args...) }

// createLAN creates the namespace that holds the bridge every node plugs
// into: the one shared link, like the switch between real machines.
func (c *Cluster) createLAN() error {
	c.lanNetns = c.opts.Prefix + "-lan"
	if err := ip("netns", "add", c.lanNetns); err != nil {
		return err
	}
	for _, s := range [][]string{
		{"-n", c.lanNetns, "link", "set", "lo", "up"},
		{"-n", c.lanNetns, "link", "add", "br0", "type", "bridge"},
		{"-n", c.lanNetns, "link", "set", "br0", "up"},
	} {
		if err := ip(s...); err != nil {
			return err
		}
	}
	return nil
}

// createControlPlaneNetns creates the namespace that gives the API server
// its address on the shared link: plugged into the LAN like a node, with
// routes back to every node's pod CIDRs so pods reach it too.
func (c *Cluster) createControlPlaneNetns() error {
	c.cpNetns = c.opts.Prefix + "-cp"
	if err := ip("netns", "add", c.cpNetns); err != nil {
		return err
	}
	if err := netnskubelet.SetSysctlIn(filepath.Join(netnskubelet.NetnsDir, c.cpNetns), "net.ipv6.conf.all.accept_dad", "0"); err != nil {
		return fmt.Errorf("control-plane namespace: %w", err)
	}
	steps := [][]string{
		{"-n", c.cpNetns, "link", "set", "lo", "up"},
		{"link", "add", "eth0", "netns", c.cpNetns, "type", "veth", "peer", "name", "cp", "netns", c.lanNetns},
		{"-n", c.lanNetns, "link", "set", "cp", "master", "br0", "up"},
		{"-n", c.cpNetns, "link", "set", "eth0", "up"},
	}
	for _, p := range controlPlaneIPs {
		steps = append(steps, []string{"-n", c.cpNetns, "addr", "add", p.String(), "dev", "eth0", "nodad"})
	}
	for j := 1; j <= c.opts.Nodes; j++ {
		for f, p := range podCIDRs(j) {
			steps = append(steps, []string{"-n", c.cpNetns, "route", "add", p.String(), "via", nodeIPs(j)[f].Addr().String(), "dev", "eth0"})
		}
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("control-plane namespace: %w", err)
		}
	}
	return nil
}

// createNode creates node i's namespace, plugs it into the LAN as eth0
// and routes the other nodes' pod CIDRs.
func (c *Cluster) createNode(i int) (*Node, error) {
	n := &Node{
		Name:     fmt.Sprintf("%s-node-%d", c.opts.Prefix, i),
		PodCIDRs: podCIDRs(i),
		netns:    fmt.Sprintf("%s-n%d", c.opts.Prefix, i),
		index:    i,
	}
	for _, p := range nodeIPs(i) {
		n.IPs = append(n.IPs, p.Addr())
	}
	n.Netns = filepath.Join(netnskubelet.NetnsDir, n.netns)
	if err := ip("netns", "add", n.netns); err != nil {
		return nil, err
	}
	for _, kv := range [][2]string{
		{"net.ipv4.ip_forward", "1"},
		{"net.ipv6.conf.all.forwarding", "1"},
		// Addresses are unique by construction: no duplicate address
		// detection delaying IPv6 on the node's links.
		{"net.ipv6.conf.all.accept_dad", "0"},
		{"net.ipv6.conf.default.accept_dad", "0"},
	} {
		if err := netnskubelet.SetSysctlIn(n.Netns, kv[0], kv[1]); err != nil {
			return nil, fmt.Errorf("node %s: sysctl %s: %w", n.Name, kv[0], err)
		}
	}
	port := fmt.Sprintf("n%d", i)
	steps := [][]string{
		{"-n", n.netns, "link", "set", "lo", "up"},
		{"link", "add", "eth0", "netns", n.netns, "type", "veth", "peer", "name", port, "netns", c.lanNetns},
		{"-n", c.lanNetns, "link", "set", port, "master", "br0", "up"},
		{"-n", n.netns, "link", "set", "eth0", "up"},
	}
	for _, p := range nodeIPs(i) {
		steps = append(steps, []string{"-n", n.netns, "addr", "add", p.String(), "dev", "eth0", "nodad"})
	}
	for j := 1; j <= c.opts.Nodes; j++ {
		if j == i {
			continue
		}
		for f, p := range podCIDRs(j) {
			steps = append(steps, []string{"-n", n.netns, "route", "add", p.String(), "via", nodeIPs(j)[f].Addr().String(), "dev", "eth0"})
		}
	}
	for f, p := range serviceRanges {
		steps = append(steps, []string{"-n", n.netns, "route", "add", p.String(), "via", controlPlaneIPs[f].Addr().String(), "dev", "eth0"})
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return n, nil
}

// ownNetns matches the names of the namespaces a cluster with this prefix
// creates — "<prefix>-lan", "<prefix>-cp", nodes "<prefix>-n<i>", pods
// "<prefix>-p<i>-<12 hex>" — and nothing else, so a prefix that starts
// another package's ("nftpol" and "nftpol-demo") never removes its
// namespaces.
func ownNetns(prefix string) *regexp.Regexp {
	return regexp.MustCompile("^" + regexp.QuoteMeta(prefix) + `-(lan|cp|n[0-9]+|p[0-9]+-[0-9a-f]{12})$`)
}

// removeNamespaces stops every process left in the cluster's namespaces
// and deletes them: the pods' (which the kubelets normally remove), the
// nodes' and the LAN.
func removeNamespaces(prefix string) {
	own := ownNetns(prefix)
	entries, _ := os.ReadDir(netnskubelet.NetnsDir)
	for _, e := range entries {
		if !own.MatchString(e.Name()) {
			continue
		}
		netnskubelet.KillProcessesIn(filepath.Join(netnskubelet.NetnsDir, e.Name()))
		_ = ip("netns", "delete", e.Name())
	}
}
