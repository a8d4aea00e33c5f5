package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Agent is one nftpol agent process programming one node's namespace.
type Agent struct {
	Node    *Node
	LogPath string
	// HealthAddr is the agent's /healthz and /readyz address.
	HealthAddr string
	// MetricsAddr is where the agent serves /metrics (unless the extra
	// arguments moved it).
	MetricsAddr string

	bin  string
	args []string
	cmd  *exec.Cmd
	done chan struct{}
	mu   sync.Mutex
}

// AgentBinary returns the agent binary to run: $NFTPOL_BIN when it
// exists (make test builds it), else a fresh build of the module.
func AgentBinary() (string, error) {
	if bin := os.Getenv("NFTPOL_BIN"); bin != "" {
		if _, err := os.Stat(bin); err == nil {
			return bin, nil
		}
	}
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "nftpol-bin-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "nftpol")
		cmd := exec.Command("go", "build", "-o", builtBin, ".")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building the agent: %w: %s", err, out)
		}
	})
	return builtBin, buildErr
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module root: %w", err)
	}
	gomod := string(out)
	for len(gomod) > 0 && (gomod[len(gomod)-1] == '\n') {
		gomod = gomod[:len(gomod)-1]
	}
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the nftpol module")
	}
	return filepath.Dir(gomod), nil
}

// FreePort returns a free TCP port on 127.0.0.1 for an agent listener.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartAgent starts an agent for node with the control plane's kubeconfig;
// extra arguments follow the defaults and can override them. Its output
// goes to a log file in logDir.
func StartAgent(cp *ControlPlane, node *Node, logDir string, extra ...string) (*Agent, error) {
	bin, err := AgentBinary()
	if err != nil {
		return nil, err
	}
	healthPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	metricsPort, err := FreePort()
	if err != nil {
		return nil, err
	}
	a := &Agent{
		Node:        node,
		bin:         bin,
		HealthAddr:  "127.0.0.1:" + strconv.Itoa(healthPort),
		MetricsAddr: "127.0.0.1:" + strconv.Itoa(metricsPort),
		LogPath:     filepath.Join(logDir, node.Name+".log"),
	}
	a.args = append([]string{
		"--kubeconfig", cp.Kubeconfig,
		"--node-name", node.Name,
		"--netns", node.NetNSPath,
		"--metrics-bind-address", a.MetricsAddr,
		"--health-probe-bind-address", a.HealthAddr,
	}, extra...)
	return a, a.start()
}

func (a *Agent) start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	logFile, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(a.bin, a.args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The agent dies with the test process, even if the test crashes.
	// Pdeathsig fires when the starting OS thread exits, and the testbed
	// discards threads that entered other namespaces, so the process is
	// started and waited for on a thread locked to one goroutine for its
	// whole life.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		_ = cmd.Wait()
		logFile.Close()
		close(done)
	}()
	if err := <-started; err != nil {
		logFile.Close()
		return fmt.Errorf("starting the agent: %w", err)
	}
	a.cmd, a.done = cmd, done
	return nil
}

// WaitReady polls /readyz until it answers 200, for at most timeout.
func (a *Agent) WaitReady(ctx context.Context, timeout time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(timeout)
	for attempt := 0; time.Now().Before(deadline) && attempt < 1000; attempt++ {
		if a.Exited() {
			return fmt.Errorf("agent for %s exited; log:\n%s", a.Node.Name, a.Log())
		}
		resp, err := client.Get("http://" + a.HealthAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("agent for %s not ready within %s; log:\n%s", a.Node.Name, timeout, a.Log())
}

// Exited reports whether the process has ended.
func (a *Agent) Exited() bool {
	a.mu.Lock()
	done := a.done
	a.mu.Unlock()
	select {
	case <-done:
		return true
	default:
		return false
	}
}

func (a *Agent) signal(sig syscall.Signal, wait time.Duration) error {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
		return nil
	case <-time.After(wait):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("agent for %s did not exit within %s after %s", a.Node.Name, wait, sig)
	}
}

// Stop sends SIGTERM and waits (10 s at most, then SIGKILL).
func (a *Agent) Stop() error { return a.signal(syscall.SIGTERM, 10*time.Second) }

// Kill sends SIGKILL and waits.
func (a *Agent) Kill() error { return a.signal(syscall.SIGKILL, 10*time.Second) }

// BuildAgent builds the agent from the module into dir with the given
// version stamped in, as a release build would (a second, distinct binary
// for upgrade tests).
func BuildAgent(dir, version string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "nftpol-"+version)
	// -trimpath as in the Makefile, so the build cache of `make build` serves.
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version="+version, "-o", bin, ".")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the agent %s: %w: %s", version, err, out)
	}
	return bin, nil
}

// Replace makes the next Restart run another binary with the same
// arguments: an upgrade in place, as a DaemonSet rollout does.
func (a *Agent) Replace(bin string) {
	a.mu.Lock()
	a.bin = bin
	a.mu.Unlock()
}

// Restart starts the same command again after the process ended.
func (a *Agent) Restart() error {
	if !a.Exited() {
		return errors.New("agent still running")
	}
	return a.start()
}

// Log returns the agent's output so far.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.LogPath)
	return string(b)
}

// StartAgentT starts an agent for a test, waits for it to be ready, stops
// it at the end and prints its log if the test failed.
func StartAgentT(t testing.TB, cp *ControlPlane, node *Node, extra ...string) *Agent {
	t.Helper()
	a := StartAgentUnreadyT(t, cp, node, extra...)
	if err := a.WaitReady(context.Background(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	return a
}

// StartAgentUnreadyT is StartAgentT without the wait for readiness, for
// a test that watches the agent start.
func StartAgentUnreadyT(t testing.TB, cp *ControlPlane, node *Node, extra ...string) *Agent {
	t.Helper()
	a, err := StartAgent(cp, node, t.TempDir(), extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = a.Kill()
		if t.Failed() {
			t.Logf("agent log of %s:\n%s", node.Name, a.Log())
		}
	})
	return a
}

// RSSBytes returns the agent process's resident memory.
func (a *Agent) RSSBytes() (int64, error) {
	a.mu.Lock()
	cmd := a.cmd
	a.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return 0, errors.New("agent not started")
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int64
			if _, err := fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kb); err != nil {
				return 0, err
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}
