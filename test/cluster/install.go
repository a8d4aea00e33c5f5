package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Where config/default installs the agent.
const (
	AgentNamespace = "nftpol-system"
	AgentDaemonSet = "nftpol"
)

// Kubectl runs the cluster's kubectl (from the assets) with the admin
// kubeconfig and returns its standard output; a failure carries its
// standard error.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.opts.Assets.Cluster, "kubectl"), append([]string{"--kubeconfig=" + c.Kubeconfig}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("kubectl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errOut.String()))
	}
	return out.String(), nil
}

// installAgent installs the agent as a user does — `kubectl apply -k` of
// the manifests — and waits (bounded) until the DaemonSet has one ready
// pod per node: the kubelets run the image nftpol:* as the agent binary
// (a hostNetwork pod in the node's namespace) with its ServiceAccount
// token, and mark it ready when its readiness probe passes.
func (c *Cluster) installAgent(ctx context.Context) error {
	dir := c.opts.Manifests
	if dir == "" {
		root, err := moduleRoot()
		if err != nil {
			return err
		}
		dir = filepath.Join(root, "config", "default")
	}
	out, err := c.Kubectl(ctx, "apply", "-k", dir)
	if err != nil {
		return fmt.Errorf("installing the agent: %w", err)
	}
	c.log.Info("agent installed", "manifests", dir, "kubectl", strings.TrimSpace(out))
	return c.WaitAgentsReady(ctx, 2*time.Minute)
}

// WaitAgentsReady waits up to timeout until the agent DaemonSet has
// scheduled, updated and made ready one pod per node.
func (c *Cluster) WaitAgentsReady(ctx context.Context, timeout time.Duration) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		for _, p := range c.procs {
			if gone, err := p.exited(); gone {
				return false, fmt.Errorf("%w\n%s", err, tail(p.logPath, 2000))
			}
		}
		ds, err := c.Clientset.AppsV1().DaemonSets(AgentNamespace).Get(ctx, AgentDaemonSet, metav1.GetOptions{})
		if err != nil {
			last = err.Error()
			return false, nil
		}
		last = fmt.Sprintf("desired %d, updated %d, ready %d", ds.Status.DesiredNumberScheduled, ds.Status.UpdatedNumberScheduled, ds.Status.NumberReady)
		return daemonSetReady(ds, len(c.Nodes)), nil
	})
	if err != nil {
		return fmt.Errorf("agent DaemonSet %s/%s not ready on %d nodes: %w (last: %s)", AgentNamespace, AgentDaemonSet, len(c.Nodes), err, last)
	}
	return nil
}

func daemonSetReady(ds *appsv1.DaemonSet, nodes int) bool {
	s := ds.Status
	return s.ObservedGeneration == ds.Generation &&
		s.DesiredNumberScheduled == int32(nodes) &&
		s.UpdatedNumberScheduled == int32(nodes) &&
		s.NumberReady == int32(nodes)
}

// moduleRoot finds the nftpol module's directory from the working
// directory up: go test runs in the package's directory, make in the
// root.
func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(data, []byte("module github.com/nftpol/nftpol\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("finding the module root: no go.mod of github.com/nftpol/nftpol above the working directory (set Options.Manifests)")
		}
		dir = parent
	}
}
