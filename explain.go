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

	"github.com/nftpol/nftpol/controllers"
	"github.com/nftpol/nftpol/selectors"
)

// runExplain answers "would this connection pass, and which policy decides
// it?" with the reference evaluator, from the cluster state the API server
// holds now.
func runExplain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("nftpol explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "path to a kubeconfig (default $KUBECONFIG or in-cluster)")
	fromArg := fs.String("from", "", "source pod NAMESPACE/NAME")
	toArg := fs.String("to", "", "destination pod NAMESPACE/NAME, or an IP address")
	portArg := fs.String("port", "", "destination PORT[/PROTO], PROTO tcp (default), udp or sctp")
	family := fs.Int("family", 4, "IP family when both ends are pods with both: 4 or 6")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *fromArg == "" || *toArg == "" || *portArg == "" {
		return errors.New("explain needs --from, --to and --port")
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
	state, err := controllers.ReadState(ctx, reader)
	if err != nil {
		return err
	}
	src, err := resolveEnd(state, *fromArg, *family, false)
	if err != nil {
		return fmt.Errorf("--from: %w", err)
	}
	dst, err := resolveEnd(state, *toArg, *family, true)
	if err != nil {
		return fmt.Errorf("--to: %w", err)
	}
	v := selectors.Evaluate(state, selectors.Packet{Src: src, Dst: dst, Protocol: proto, Port: port})
	fmt.Fprintf(stdout, "%s -> %s\n%s", *fromArg, *toArg, v.Explain())
	return nil
}

func parsePort(s string) (uint16, selectors.Protocol, error) {
	num, protoName, _ := strings.Cut(s, "/")
	n, err := strconv.ParseUint(num, 10, 16)
	if err != nil || n == 0 {
		return 0, 0, fmt.Errorf("--port %q: want a port number 1-65535, optionally /tcp, /udp or /sctp", s)
	}
	switch strings.ToLower(protoName) {
	case "", "tcp":
		return uint16(n), selectors.ProtocolTCP, nil
	case "udp":
		return uint16(n), selectors.ProtocolUDP, nil
	case "sctp":
		return uint16(n), selectors.ProtocolSCTP, nil
	}
	return 0, 0, fmt.Errorf("--port %q: unknown protocol %q", s, protoName)
}

// resolveEnd turns NAMESPACE/NAME into the pod's address of the family, or
// parses an IP (allowed for the destination only).
func resolveEnd(state *selectors.State, arg string, family int, ipAllowed bool) (netip.Addr, error) {
	if ipAllowed {
		if a, err := netip.ParseAddr(arg); err == nil {
			return a.Unmap(), nil
		}
	}
	ns, name, ok := strings.Cut(arg, "/")
	if !ok {
		return netip.Addr{}, fmt.Errorf("%q is not NAMESPACE/NAME", arg)
	}
	for _, p := range state.Pods {
		if p.Namespace != ns || p.Name != name {
			continue
		}
		if !p.IsEndpoint() {
			return netip.Addr{}, fmt.Errorf("pod %s has no address policies apply to (host network, finished, or no IP yet)", arg)
		}
		for _, ip := range p.IPs {
			if (family == 6) == ip.Is6() {
				return ip, nil
			}
		}
		return p.IPs[0], nil
	}
	return netip.Addr{}, fmt.Errorf("no pod %s", arg)
}
