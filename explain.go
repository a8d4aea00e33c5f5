package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/nftpol/nftpol/controllers"
	"github.com/nftpol/nftpol/selectors/reference"
)

// runExplain answers "would this connection pass, and which policy decides
// it?" with the reference evaluator, from the objects the API server holds
// now: the evaluator reads them itself, not the agent's model of them.
func runExplain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	for _, a := range args {
		if a == "--policy" || a == "-policy" || strings.HasPrefix(a, "--policy=") || strings.HasPrefix(a, "-policy=") {
			return runExplainPolicy(ctx, args, stdout, stderr)
		}
	}
	fs := flag.NewFlagSet("nftpol explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "path to a kubeconfig (default $KUBECONFIG or in-cluster)")
	fromArg := fs.String("from", "", "source pod NAMESPACE/NAME")
	toArg := fs.String("to", "", "destination pod NAMESPACE/NAME, or an IP address")
	portArg := fs.String("port", "", "destination PORT[/PROTO], PROTO tcp (default), udp or sctp")
	family := fs.Int("family", 0, "IP family, 4 or 6 (default: IPv4 when both ends have it, else IPv6)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *fromArg == "" || *toArg == "" || *portArg == "" {
		return errors.New("explain needs --from, --to and --port")
	}
	if *family != 0 && *family != 4 && *family != 6 {
		return fmt.Errorf("--family %d: want 4 or 6", *family)
	}
	port, proto, err := parsePort(*portArg)
	if err != nil {
		return err
	}
	cfg, err := restConfig(*kubeconfig)
	if err != nil {
		return err
	}
	reader, err := controllers.NewReader(cfg)
	if err != nil {
		return err
	}
	cl, err := reference.Read(ctx, reader)
	if err != nil {
		return err
	}
	out, err := explain(cl, *fromArg, *toArg, *family, port, proto)
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, out)
	return err
}

func parsePort(s string) (int32, corev1.Protocol, error) {
	num, protoName, _ := strings.Cut(s, "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return 0, "", fmt.Errorf("--port %q: want a port number 1-65535, optionally /tcp, /udp or /sctp", s)
	}
	switch strings.ToLower(protoName) {
	case "", "tcp":
		return int32(n), corev1.ProtocolTCP, nil
	case "udp":
		return int32(n), corev1.ProtocolUDP, nil
	case "sctp":
		return int32(n), corev1.ProtocolSCTP, nil
	}
	return 0, "", fmt.Errorf("--port %q: unknown protocol %q", s, protoName)
}

// explain decides the connection from the pod from to to (a pod or an
// address) and says why. family is 4, 6, or 0 to choose: the two ends'
// addresses must be of one family, and a dual-stack pod talking to a
// single-stack one can only use the family they share.
func explain(cl *reference.Cluster, from, to string, family int, port int32, proto corev1.Protocol) (string, error) {
	srcPod, err := findEndpoint(cl, from)
	if err != nil {
		return "", fmt.Errorf("--from: %w", err)
	}
	srcAddrs := reference.Addresses(srcPod)
	var note string
	var src, dst netip.Addr
	dstKey := "" // the destination pod, when --to names one
	if ip, err := netip.ParseAddr(to); err == nil {
		dst = ip.Unmap()
		if family != 0 && family != familyOf(dst) {
			return "", fmt.Errorf("--to %s is an IPv%d address, not of --family %d", to, familyOf(dst), family)
		}
		var ok bool
		if src, ok = addressOf(srcAddrs, familyOf(dst)); !ok {
			return "", fmt.Errorf("%s has no IPv%d address (it has %s), so it cannot reach %s", from, familyOf(dst), listAddrs(srcAddrs), to)
		}
	} else {
		dstPod, err := findEndpoint(cl, to)
		if err != nil {
			return "", fmt.Errorf("--to: %w", err)
		}
		dstKey = to
		dstAddrs := reference.Addresses(dstPod)
		fam, why, err := chooseFamily(from, srcAddrs, to, dstAddrs, family)
		if err != nil {
			return "", err
		}
		note = why
		src, _ = addressOf(srcAddrs, fam)
		dst, _ = addressOf(dstAddrs, fam)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s -> %s\n", from, to)
	if note != "" {
		fmt.Fprintf(&b, "(%s)\n", note)
	}
	for _, end := range []struct {
		name string
		addr netip.Addr
	}{{from, src}, {dstKey, dst}} {
		// A stale object may claim the address of a newer pod: policies
		// then see the newer pod there, and so does the evaluator.
		if owner := cl.OwnerOf(end.addr); owner != nil && end.name != "" && owner.Namespace+"/"+owner.Name != end.name {
			fmt.Fprintf(&b, "(%s is also claimed by %s/%s, which owns it (the newest creationTimestamp wins, then namespace/name): policies see that pod there)\n", end.addr, owner.Namespace, owner.Name)
		}
	}
	pkt := reference.Packet{Src: src, Dst: dst, Protocol: proto, Port: port}
	v := reference.Evaluate(cl, pkt)
	b.WriteString(v.Explain())
	explainAudit(&b, cl, pkt)
	return b.String(), nil
}

// explainAudit names, per side, each policy in audit mode that would deny
// the packet: one the evaluator leaves out of the decision above, and that
// would turn that side's allow into a deny if it were enforced. A packet
// already denied is no would-deny (the definition of audit mode), so it
// gets no such line.
func explainAudit(b *strings.Builder, cl *reference.Cluster, pkt reference.Packet) {
	for _, policy := range reference.AuditPolicies(cl) {
		a := reference.Audit(cl, pkt, policy)
		if !a.WouldDeny() {
			continue
		}
		for _, side := range []struct {
			dir reference.Direction
			s   reference.Side
		}{{reference.Egress, a.Enforced.Egress}, {reference.Ingress, a.Enforced.Ingress}} {
			if a.SideWouldDeny(side.dir) {
				fmt.Fprintf(b, "  %s: allowed; would be denied by %s (audit mode): %s\n", side.dir, policy, wouldDenyReason(side.s))
			}
		}
	}
}

// wouldDenyReason says what denies a side with a policy in audit mode
// enforced, in the words of Verdict.Explain.
func wouldDenyReason(s reference.Side) string {
	if s.Tier == reference.TierNetworkPolicy {
		return fmt.Sprintf("%s would be isolated by %s and no rule matches", s.Pod, strings.Join(s.IsolatedBy, ", "))
	}
	if n := len(s.ClusterRules); n > 0 {
		return fmt.Sprintf("denied for %s by %s", s.Pod, s.ClusterRules[n-1])
	}
	return fmt.Sprintf("denied for %s", s.Pod)
}

// chooseFamily picks the IP family of a connection between two pods: the
// one asked for, which both must have; else IPv4 when both have it; else
// IPv6 when both have it. Pods without a common family cannot talk.
func chooseFamily(from string, srcAddrs []netip.Addr, to string, dstAddrs []netip.Addr, family int) (int, string, error) {
	has := func(addrs []netip.Addr, fam int) bool { _, ok := addressOf(addrs, fam); return ok }
	if family != 0 {
		for _, end := range []struct {
			name  string
			addrs []netip.Addr
		}{{from, srcAddrs}, {to, dstAddrs}} {
			if !has(end.addrs, family) {
				return 0, "", fmt.Errorf("--family %d: %s has no IPv%d address (it has %s)", family, end.name, family, listAddrs(end.addrs))
			}
		}
		return family, "", nil
	}
	v4, v6 := has(srcAddrs, 4) && has(dstAddrs, 4), has(srcAddrs, 6) && has(dstAddrs, 6)
	switch {
	case v4 && v6:
		return 4, "", nil // the default of the flag; both families said nothing surprising
	case v4:
		return 4, fmt.Sprintf("over IPv4, the only family both %s (%s) and %s (%s) have", from, listAddrs(srcAddrs), to, listAddrs(dstAddrs)), nil
	case v6:
		return 6, fmt.Sprintf("over IPv6, the only family both %s (%s) and %s (%s) have", from, listAddrs(srcAddrs), to, listAddrs(dstAddrs)), nil
	}
	return 0, "", fmt.Errorf("%s (%s) and %s (%s) share no IP family: no connection between them is possible", from, listAddrs(srcAddrs), to, listAddrs(dstAddrs))
}

// findEndpoint returns the pod NAMESPACE/NAME, which must be one policies
// apply to.
func findEndpoint(cl *reference.Cluster, arg string) (*corev1.Pod, error) {
	ns, name, ok := strings.Cut(arg, "/")
	if !ok {
		return nil, fmt.Errorf("%q is not NAMESPACE/NAME", arg)
	}
	for _, p := range cl.Pods {
		if p.Namespace != ns || p.Name != name {
			continue
		}
		if !reference.IsEndpoint(p) {
			return nil, fmt.Errorf("pod %s has no address policies apply to (host network, finished, or no IP yet)", arg)
		}
		return p, nil
	}
	return nil, fmt.Errorf("no pod %s", arg)
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return 4
	}
	return 6
}

func addressOf(addrs []netip.Addr, family int) (netip.Addr, bool) {
	for _, a := range addrs {
		if familyOf(a) == family {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func listAddrs(addrs []netip.Addr) string {
	s := make([]string, len(addrs))
	for i, a := range addrs {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
}
