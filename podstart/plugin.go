package podstart

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	cnitypes100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// PluginType is the plugin's name in a conflist and in the CNI bin
// directory.
const PluginType = "nftpol-cni"

// DefaultTimeout bounds how long ADD and CHECK wait for the agent.
const DefaultTimeout = 10 * time.Second

// Config is the plugin's entry in the conflist.
type Config struct {
	types.PluginConf
	// Socket is the agent's socket; DefaultSocket when empty.
	Socket string `json:"socket,omitempty"`
	// Timeout (a Go duration) bounds the wait for the agent;
	// DefaultTimeout when empty.
	Timeout string `json:"timeout,omitempty"`
	// FailOpen lets ADD succeed, unprotected, when no agent listens on the
	// socket for the whole timeout. The default, false, fails the ADD: the
	// kubelet retries the sandbox until the agent is back (see README,
	// "No window at pod start").
	FailOpen bool `json:"failOpen,omitempty"`
}

// podArgs are the CNI_ARGS the kubelet's runtime passes; types.LoadArgs
// matches them by field name, hence the names.
type podArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE types.UnmarshallableString
	K8S_POD_NAME      types.UnmarshallableString
}

// Plugin runs the plugin for one CNI command, as skel dispatches it
// from the CNI_* environment; it returns the error to print (nil on
// success). Each pod's wait is one line on stderr (the runtime's log).
func Plugin(about string) *types.Error {
	return skel.PluginMainFuncsWithError(skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return cmdAdd(a, OpAdd) },
		Check:  func(a *skel.CmdArgs) error { return cmdAdd(a, OpCheck) },
		Del:    cmdDel,
		Status: func(*skel.CmdArgs) error { return nil },
		GC:     func(*skel.CmdArgs) error { return nil },
	}, version.All, about)
}

// parse reads the plugin's configuration, prevResult and pod identity.
func parse(a *skel.CmdArgs) (*Config, podArgs, time.Duration, error) {
	conf := &Config{}
	var pa podArgs
	if err := json.Unmarshal(a.StdinData, conf); err != nil {
		return nil, pa, 0, fmt.Errorf("parsing the %s configuration: %w", PluginType, err)
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return nil, pa, 0, fmt.Errorf("parsing prevResult: %w", err)
	}
	if conf.Socket == "" {
		conf.Socket = DefaultSocket
	}
	timeout := DefaultTimeout
	if conf.Timeout != "" {
		d, err := time.ParseDuration(conf.Timeout)
		if err != nil || d <= 0 {
			return nil, pa, 0, fmt.Errorf("%s: timeout %q is not a positive duration", PluginType, conf.Timeout)
		}
		timeout = d
	}
	if err := types.LoadArgs(a.Args, &pa); err != nil {
		return nil, pa, 0, fmt.Errorf("parsing CNI_ARGS: %w", err)
	}
	return conf, pa, timeout, nil
}

// cmdAdd (ADD and CHECK) tells the agent the pod's addresses from
// prevResult and returns once the agent has them in force; ADD then
// passes prevResult on unchanged.
func cmdAdd(a *skel.CmdArgs, op Op) error {
	conf, pa, timeout, err := parse(a)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return fmt.Errorf("%s must be chained after the plugin that gives the pod its addresses (no prevResult)", PluginType)
	}
	prev, err := cnitypes100.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return fmt.Errorf("converting prevResult: %w", err)
	}
	ns, name := string(pa.K8S_POD_NAMESPACE), string(pa.K8S_POD_NAME)
	var ips []netip.Addr
	for _, ipc := range prev.IPs {
		if addr, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			ips = append(ips, addr.Unmap())
		}
	}
	// Not a Kubernetes pod, or no address: no policy can select it.
	if ns != "" && name != "" && len(ips) > 0 {
		req := Request{Op: op, Namespace: ns, Name: name, IPs: ips}
		start := time.Now()
		err := askWithin(req, conf.Socket, timeout)
		var absent *AbsentError
		switch {
		case err == nil:
			// One line per pod on the plugin's stderr (the runtime's
			// log): how long the pod's start waited for the agent.
			fmt.Fprintf(os.Stderr, "%s: %s pod %s/%s %v in force after %s\n", PluginType, op, ns, name, ips, time.Since(start))
		case conf.FailOpen && errors.As(err, &absent):
			fmt.Fprintf(os.Stderr, "%s: %s pod %s/%s %v NOT ENFORCED (failOpen, no agent): %v\n", PluginType, op, ns, name, ips, err)
		default:
			return fmt.Errorf("pod %s/%s (%v): the nftpol agent did not confirm its addresses are enforced within %s: %w", ns, name, ips, timeout, err)
		}
	}
	if op == OpCheck {
		return nil
	}
	return types.PrintResult(conf.PrevResult, conf.CNIVersion)
}

// askWithin asks the agent, dialing again while no agent listens (it may
// be restarting), until timeout.
func askWithin(req Request, socket string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	for {
		err := Ask(ctx, socket, req)
		var absent *AbsentError
		if err == nil || !errors.As(err, &absent) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// cmdDel tells the agent to forget the sandbox's addresses. It succeeds
// when the agent is absent or slow (the spec: DEL must succeed when what
// it would clean up is already gone; the agent drops the hint anyway
// once the pod is gone).
func cmdDel(a *skel.CmdArgs) error {
	conf, pa, _, err := parse(a)
	if err != nil {
		return err
	}
	ns, name := string(pa.K8S_POD_NAMESPACE), string(pa.K8S_POD_NAME)
	if ns != "" && name != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = Ask(ctx, conf.Socket, Request{Op: OpDel, Namespace: ns, Name: name})
	}
	return nil
}
