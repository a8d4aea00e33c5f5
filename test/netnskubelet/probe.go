package netnskubelet

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// probe runs a container's readiness and liveness probes while the pod
// lives. Probes start in the node's namespace, as the kubelet's come from
// the node: a NetworkPolicy never blocks them (nftpol does not hook
// output). A failed liveness probe kills the container; the supervisor
// restarts it as the restart policy says. Startup and gRPC probes are not
// implemented: a startup probe is ignored, a gRPC probe always fails.
func (k *Kubelet) probe(c *container) {
	type state struct {
		probe               *corev1.Probe
		successes, failures int32
		next                time.Time // when to probe next
	}
	var readiness, liveness *state
	if p := c.spec.ReadinessProbe; p != nil {
		readiness = &state{probe: p}
	}
	if p := c.spec.LivenessProbe; p != nil {
		liveness = &state{probe: p}
	}
	// Checked four times a second, so a pod turns ready soon after its
	// first successful probe.
	tick := 250 * time.Millisecond
	for {
		select {
		case <-c.rt.stopCh:
			return
		case <-time.After(tick):
		}
		c.mu.Lock()
		running, since, proc := c.running, time.Since(c.startedAt.Time), c.proc
		c.mu.Unlock()
		for _, s := range []*state{readiness, liveness} {
			if s == nil {
				continue
			}
			if !running {
				s.successes, s.failures, s.next = 0, 0, time.Time{}
				continue
			}
			p := s.probe
			if since < time.Duration(p.InitialDelaySeconds)*time.Second || time.Now().Before(s.next) {
				continue
			}
			periodSec := p.PeriodSeconds
			if periodSec <= 0 {
				periodSec = 10
			}
			s.next = time.Now().Add(time.Duration(periodSec) * time.Second)
			err := k.runProbe(c, p)
			if err == nil {
				s.successes++
				s.failures = 0
			} else {
				s.failures++
				s.successes = 0
				k.log.V(1).Info("probe failed", "pod", c.rt.key, "container", c.spec.Name, "err", err.Error())
				k.events.Event(c.rt.ref, corev1.EventTypeWarning, "Unhealthy", fmt.Sprintf("%s probe failed: %v", map[bool]string{true: "Readiness", false: "Liveness"}[s == readiness], err))
			}
			success := max(p.SuccessThreshold, 1)
			failure := max(p.FailureThreshold, 1)
			if p.FailureThreshold == 0 {
				failure = 3
			}
			switch s {
			case readiness:
				c.mu.Lock()
				changed := false
				if s.successes >= success && !c.ready {
					c.ready, changed = true, true
				}
				if s.failures >= failure && c.ready {
					c.ready, changed = false, true
				}
				c.mu.Unlock()
				if changed {
					k.queue.Add(c.rt.key)
				}
			case liveness:
				if s.failures >= failure && proc != nil {
					k.log.Info("liveness probe failed; killing the container", "pod", c.rt.key, "container", c.spec.Name, "err", err.Error())
					k.events.Event(c.rt.ref, corev1.EventTypeNormal, "Killing", fmt.Sprintf("Container %s failed liveness probe, will be restarted", c.spec.Name))
					_ = syscall.Kill(-proc.Pid, syscall.SIGKILL)
					s.successes, s.failures = 0, 0
				}
			}
		}
	}
}

// runProbe runs one probe with its timeout (default 1s).
func (k *Kubelet) runProbe(c *container, p *corev1.Probe) error {
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	podIP := ""
	if len(c.rt.ips) > 0 {
		podIP = c.rt.ips[0].String()
	}
	switch {
	case p.Exec != nil:
		img, _ := k.cfg.Images.Lookup(c.spec.Image)
		argv, err := img.Resolve(p.Exec.Command)
		if err != nil {
			return err
		}
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Env = c.env
		if err := c.sandbox.start(cmd.Start); err != nil {
			return err
		}
		return cmd.Wait()
	case p.TCPSocket != nil:
		port, err := resolvePort(p.TCPSocket.Port, c.spec)
		if err != nil {
			return err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		conn, err := DialIn(ctx, k.cfg.NodeNetns, "tcp", net.JoinHostPort(host, strconv.Itoa(port)), timeout)
		if err != nil {
			return err
		}
		return conn.Close()
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := resolvePort(g.Port, c.spec)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = podIP
		}
		scheme := "http"
		if g.Scheme == corev1.URISchemeHTTPS {
			scheme = "https"
		}
		u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: g.Path}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		client := http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return DialIn(ctx, k.cfg.NodeNetns, network, addr, timeout)
			},
			// The kubelet does not verify probe certificates either.
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as the kubelet
			DisableKeepAlives: true,
		}}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe %s: status %d", u.String(), resp.StatusCode)
		}
		return nil
	}
	return fmt.Errorf("probe of container %s: only exec, tcpSocket and httpGet probes are implemented", c.spec.Name)
}

// resolvePort turns a probe port (a number or a named container port)
// into a number.
func resolvePort(p intstr.IntOrString, c corev1.Container) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	return 0, fmt.Errorf("container %s has no port named %q", c.Name, p.StrVal)
}
