package testbed

import (
	"context"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// gateway addresses pods route through: every node-side veth holds them,
// so a pod's only neighbour is its node (as with Calico).
const (
	gatewayV4 = "169.254.1.1"
	gatewayV6 = "fe80::1"
)

// AddPod creates the pod's namespace, joins it to its node, starts its
// servers and creates its API object with status Running and its IPs.
func (b *Bed) AddPod(ctx context.Context, spec PodSpec) (*Pod, error) {
	node := b.Node(spec.Node)
	if node == nil {
		return nil, fmt.Errorf("no node %q", spec.Node)
	}
	b.mu.Lock()
	b.nextPod++
	n := b.nextPod
	b.mu.Unlock()
	if n > 250 {
		return nil, fmt.Errorf("testbed: at most 250 pods")
	}
	pod := &Pod{
		Namespace: spec.Namespace, Name: spec.Name, Node: node.Name,
		IPv4:  netip.AddrFrom4([4]byte{10, 244, byte(node.index), byte(n)}),
		netns: fmt.Sprintf("%s-p%d", b.opts.Prefix, n),
	}
	_, v6 := podPrefixes(node.index)
	b6 := v6.Addr().As16()
	b6[15] = byte(n)
	pod.IPv6 = netip.AddrFrom16(b6)
	pod.NetNSPath = netnsPath(pod.netns)
	if spec.ReuseAddrsOf != "" {
		b.mu.Lock()
		old := b.freed[spec.ReuseAddrsOf]
		b.mu.Unlock()
		if old == nil || old.Node != node.Name {
			return nil, fmt.Errorf("no deleted pod %s on node %s to take addresses from", spec.ReuseAddrsOf, node.Name)
		}
		pod.IPv4, pod.IPv6 = old.IPv4, old.IPv6
	}

	if err := b.plumbPod(node, pod, n); err != nil {
		_ = ip("netns", "delete", pod.netns)
		return nil, err
	}
	srv, err := startServers(pod.NetNSPath, pod.Key(), b.opts.Ports)
	if err != nil {
		_ = ip("netns", "delete", pod.netns)
		return nil, err
	}
	pod.servers = srv
	if err := b.createPodObject(ctx, pod, spec.Labels); err != nil {
		srv.close()
		_ = ip("netns", "delete", pod.netns)
		return nil, err
	}
	b.mu.Lock()
	b.pods[pod.Key()] = pod
	b.mu.Unlock()
	b.onClose(func() { b.removePod(pod) })
	return pod, nil
}

func (b *Bed) plumbPod(node *Node, pod *Pod, n int) error {
	if err := ip("netns", "add", pod.netns); err != nil {
		return err
	}
	if err := setSysctl(pod.NetNSPath, "net.ipv6.conf.default.accept_dad", "0"); err != nil {
		return err
	}
	hostIf := fmt.Sprintf("pod%d", n)
	pns, nns := pod.netns, node.netns
	steps := [][]string{
		{"link", "add", "eth0", "netns", pns, "type", "veth", "peer", "name", hostIf, "netns", nns},
		{"-n", pns, "link", "set", "lo", "up"},
		{"-n", pns, "addr", "add", pod.IPv4.String() + "/32", "dev", "eth0"},
		{"-n", pns, "addr", "add", pod.IPv6.String() + "/128", "dev", "eth0", "nodad"},
		{"-n", pns, "link", "set", "eth0", "up"},
		{"-n", pns, "route", "add", gatewayV4, "dev", "eth0", "scope", "link"},
		{"-n", pns, "route", "add", "default", "via", gatewayV4, "dev", "eth0"},
		{"-n", nns, "addr", "add", gatewayV4 + "/32", "dev", hostIf, "noprefixroute"},
		{"-n", nns, "addr", "add", gatewayV6 + "/64", "dev", hostIf, "nodad"},
		{"-n", nns, "link", "set", hostIf, "up"},
		{"-n", nns, "route", "add", pod.IPv4.String() + "/32", "dev", hostIf},
		{"-n", nns, "-6", "route", "add", pod.IPv6.String() + "/128", "dev", hostIf},
		{"-n", pns, "-6", "route", "add", "default", "via", gatewayV6, "dev", "eth0"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("pod %s: %w", pod.Key(), err)
		}
	}
	return nil
}

// ContainerPorts are the named ports every testbed pod declares, named as
// in the upstream e2e suite: serve-<port>-tcp, serve-<port>-udp.
func ContainerPorts(ports []int) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, p := range ports {
		out = append(out,
			corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-tcp", p), ContainerPort: int32(p), Protocol: corev1.ProtocolTCP},
			corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-udp", p), ContainerPort: int32(p), Protocol: corev1.ProtocolUDP})
	}
	return out
}

func (b *Bed) createPodObject(ctx context.Context, pod *Pod, labels map[string]string) error {
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:   pod.Node,
			Containers: []corev1.Container{{Name: "server", Image: "nftpol-testbed", Ports: ContainerPorts(b.opts.Ports)}},
		},
	}
	pods := b.cp.Clientset.CoreV1().Pods(pod.Namespace)
	created, err := pods.Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating pod %s: %w", pod.Key(), err)
	}
	created.Status = corev1.PodStatus{
		Phase:  corev1.PodRunning,
		PodIP:  pod.IPv4.String(),
		PodIPs: []corev1.PodIP{{IP: pod.IPv4.String()}, {IP: pod.IPv6.String()}},
	}
	if _, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("writing status of pod %s: %w", pod.Key(), err)
	}
	return nil
}

// SetPodPhase writes a pod's status phase (Succeeded or Failed end it, as
// the kubelet would report), leaving its namespace and addresses in place.
func (b *Bed) SetPodPhase(ctx context.Context, ns, name string, phase corev1.PodPhase) error {
	pods := b.cp.Clientset.CoreV1().Pods(ns)
	pod, err := pods.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading pod %s/%s: %w", ns, name, err)
	}
	pod.Status.Phase = phase
	if _, err := pods.UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("writing the phase of pod %s/%s: %w", ns, name, err)
	}
	return nil
}

// DeletePod deletes a pod's API object and removes its namespace.
func (b *Bed) DeletePod(ctx context.Context, ns, name string) error {
	key := ns + "/" + name
	b.mu.Lock()
	pod := b.pods[key]
	delete(b.pods, key)
	if pod != nil {
		b.freed[key] = pod
	}
	b.mu.Unlock()
	if pod == nil {
		return fmt.Errorf("no pod %s", key)
	}
	zero := int64(0)
	err := b.cp.Clientset.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	b.removePod(pod)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s: %w", key, err)
	}
	return nil
}

func (b *Bed) removePod(pod *Pod) {
	if pod.servers != nil {
		pod.servers.close()
	}
	_ = ip("netns", "delete", pod.netns)
}
