package netnskubelet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	cnitypes100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// cniNetwork is the node's pod network: the loopback plugin for lo, then
// ptp (a routed link per pod) or bridge (every pod of the node on one
// bridge, cni0, that holds the gateway address) with host-local IPAM over
// the node's pod CIDR for eth0, the setup the kubelet's CRI runtime would
// run from /etc/cni/net.d. The plugins run in the node's namespace, so the
// host ends of the pod links land there.
//
// The pod network's conflist is the first one of the node's CNI
// configuration directory (root.confDir()), read again at every ADD and
// DEL as a CRI runtime watches it: a DaemonSet may chain a plugin into it
// (nftpol's, for one), whose binary it puts into the node's own plugin
// directory. The kubelet writes its own as 10-netnskubelet.conflist.
type cniNetwork struct {
	cni      *libcni.CNIConfig
	loopback *libcni.NetworkConfigList
	root     nodeRoot
	stderr   *os.File
}

// close closes the plugin log; call it once no plugin runs any more.
func (n *cniNetwork) close() { _ = n.stderr.Close() }

func newCNINetwork(binDir, stateDir string, root nodeRoot, plugin string, podCIDRs []netip.Prefix) (*cniNetwork, error) {
	if plugin == "" {
		plugin = "ptp"
	}
	if plugin != "ptp" && plugin != "bridge" {
		return nil, fmt.Errorf("CNI plugin %q: ptp or bridge", plugin)
	}
	for _, p := range []string{"loopback", plugin, "host-local"} {
		if _, err := os.Stat(filepath.Join(binDir, p)); err != nil {
			return nil, fmt.Errorf("CNI plugin %s missing in %q: %w", p, binDir, err)
		}
	}
	// One range per family; the pod's default routes go to the ptp
	// gateway (the first address of each range, on the host end of every
	// pod link of this node).
	var ranges [][]map[string]string
	var routes []map[string]string
	for _, p := range podCIDRs {
		ranges = append(ranges, []map[string]string{{"subnet": p.Masked().String()}})
		if p.Addr().Is4() {
			routes = append(routes, map[string]string{"dst": "0.0.0.0/0"})
		} else {
			routes = append(routes, map[string]string{"dst": "::/0"})
		}
	}
	main := map[string]any{
		"type":   plugin,
		"ipMasq": false,
		"mtu":    1500,
		// host-local takes requested addresses (PodIPsAnnotation) from
		// the runtime configuration.
		"capabilities": map[string]bool{"ips": true},
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  ranges,
			"routes":  routes,
			"dataDir": filepath.Join(stateDir, "ipam"),
		},
	}
	if plugin == "bridge" {
		// The bridge holds each range's gateway address; hairpin mode
		// lets a pod reach itself through a Service.
		main["bridge"] = "cni0"
		main["isGateway"] = true
		main["hairpinMode"] = true
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "netnskubelet",
		"plugins":    []any{main},
	}
	data, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encoding the CNI configuration: %w", err)
	}
	for _, dir := range []string{stateDir, root.confDir(), root.binDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("creating the CNI directories: %w", err)
		}
	}
	if _, err := libcni.ConfListFromBytes(data); err != nil {
		return nil, fmt.Errorf("parsing the CNI configuration: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root.confDir(), "10-netnskubelet.conflist"), data, 0o644); err != nil {
		return nil, fmt.Errorf("writing the CNI configuration: %w", err)
	}
	loopback, err := libcni.ConfListFromBytes([]byte(`{"cniVersion":"1.0.0","name":"cni-loopback","plugins":[{"type":"loopback"}]}`))
	if err != nil {
		return nil, fmt.Errorf("parsing the loopback configuration: %w", err)
	}
	// Plugins' stderr (their errors also come back in the result) goes to
	// a file next to the configuration.
	stderr, err := os.OpenFile(filepath.Join(stateDir, "plugins.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("opening the CNI plugin log: %w", err)
	}
	// An explicit exec: libcni creates its default one lazily, which
	// races when pods are set up in parallel.
	exec := &rootedExec{Exec: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: stderr}, PluginDecoder: version.PluginDecoder{}}, root: root}
	return &cniNetwork{
		cni:      libcni.NewCNIConfigWithCacheDir([]string{root.binDir(), binDir}, filepath.Join(stateDir, "cache"), exec),
		loopback: loopback,
		root:     root,
		stderr:   stderr,
	}, nil
}

// podNetwork reads the node's conflist: the first of its configuration
// directory in lexical order.
func (n *cniNetwork) podNetwork() (*libcni.NetworkConfigList, error) {
	files, err := libcni.ConfFiles(n.root.confDir(), []string{".conflist"})
	if err != nil {
		return nil, fmt.Errorf("reading the CNI configuration directory: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no .conflist in %s", n.root.confDir())
	}
	sort.Strings(files)
	list, err := libcni.ConfListFromFile(files[0])
	if err != nil {
		return nil, fmt.Errorf("reading the CNI configuration: %w", err)
	}
	return list, nil
}

// PodIPsAnnotation on a pod asks for its addresses (comma-separated, one
// per family, inside the node's pod CIDRs), as CNIs with static-address
// annotations offer: host-local hands them out if they are free. Tests use
// it to recreate a pod on the address of one just deleted.
const PodIPsAnnotation = "netnskubelet/ips"

func runtimeConf(podNetns, containerID, namespace, name, uid, ips string) *libcni.RuntimeConf {
	var capArgs map[string]any
	if ips != "" {
		capArgs = map[string]any{"ips": strings.Split(ips, ",")}
	}
	return &libcni.RuntimeConf{
		CapabilityArgs: capArgs,
		ContainerID:    containerID,
		NetNS:          podNetns,
		IfName:         "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", namespace},
			{"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", containerID},
			{"K8S_POD_UID", uid},
		},
	}
}

// add runs CNI ADD for lo and eth0 and returns the pod's addresses.
func (n *cniNetwork) add(ctx context.Context, nodeNetns string, rt *libcni.RuntimeConf) ([]netip.Addr, error) {
	var addrs []netip.Addr
	err := onThreadIn(nodeNetns, "", func() error {
		lo := *rt
		lo.IfName = "lo"
		if _, err := n.cni.AddNetworkList(ctx, n.loopback, &lo); err != nil {
			return fmt.Errorf("CNI ADD loopback: %w", err)
		}
		pod, err := n.podNetwork()
		if err != nil {
			return err
		}
		res, err := n.cni.AddNetworkList(ctx, pod, rt)
		if err != nil {
			return fmt.Errorf("CNI ADD %s: %w", pod.Name, err)
		}
		cur, err := cnitypes100.NewResultFromResult(res)
		if err != nil {
			return fmt.Errorf("reading the CNI result: %w", err)
		}
		for _, ipc := range cur.IPs {
			if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
				addrs = append(addrs, a.Unmap())
			}
		}
		return nil
	})
	if err == nil && len(addrs) == 0 {
		err = errors.New("CNI ADD returned no address")
	}
	return addrs, err
}

// del runs CNI DEL for eth0 and lo; it frees the address even when the
// namespace is already gone.
func (n *cniNetwork) del(ctx context.Context, nodeNetns string, rt *libcni.RuntimeConf) error {
	return onThreadIn(nodeNetns, "", func() error {
		pod, err := n.podNetwork()
		if err != nil {
			return err
		}
		if err := n.cni.DelNetworkList(ctx, pod, rt); err != nil {
			return fmt.Errorf("CNI DEL %s: %w", pod.Name, err)
		}
		lo := *rt
		lo.IfName = "lo"
		if err := n.cni.DelNetworkList(ctx, n.loopback, &lo); err != nil {
			return fmt.Errorf("CNI DEL loopback: %w", err)
		}
		return nil
	})
}
