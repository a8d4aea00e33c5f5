package netnskubelet

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Restart back-off: shorter than the real kubelet's (10s doubling to 5m),
// so a test cluster recovers from a crashing container in seconds.
const (
	backoffInitial = time.Second
	backoffMax     = 20 * time.Second
)

// container supervises one container's process: start, wait, restart as
// the pod's restart policy says, and the state the pod status reports.
type container struct {
	k       *Kubelet
	rt      *podRuntime
	spec    corev1.Container
	init    bool
	restart corev1.RestartPolicy

	// Fixed once the container is created; a non-empty configErr keeps
	// it waiting with that reason and message.
	argv                 []string
	env                  []string
	sandbox              *sandbox
	configErr, configWhy string

	mu           sync.Mutex
	proc         *os.Process
	running      bool
	startedAt    metav1.Time
	restartCount int32
	waitReason   string
	waitMessage  string
	current      *corev1.ContainerStateTerminated // the last exit, while waiting to restart or for good
	last         *corev1.ContainerStateTerminated // the exit before the current run
	done         bool                             // never runs again
	ready        bool
}

func (k *Kubelet) newContainer(pod *corev1.Pod, rt *podRuntime, spec corev1.Container, init bool, env *envResolver, volumes map[string]string) *container {
	c := &container{k: k, rt: rt, spec: spec, init: init, restart: pod.Spec.RestartPolicy, waitReason: "ContainerCreating"}
	if init && spec.RestartPolicy != nil && *spec.RestartPolicy == corev1.ContainerRestartPolicyAlways {
		c.configErr, c.configWhy = "CreateContainerConfigError", "sidecar init containers (restartPolicy: Always) are not supported by netnskubelet"
		return c
	}
	img, ok := k.cfg.Images.Lookup(spec.Image)
	if !ok {
		c.configErr, c.configWhy = "ErrImagePull", fmt.Sprintf("image %s is not in netnskubelet's image table (images are mapped to binaries built from source, never pulled)", spec.Image)
		return c
	}
	vars, err := env.containerEnv(spec)
	if err != nil {
		c.configErr, c.configWhy = "CreateContainerConfigError", err.Error()
		return c
	}
	argv, err := img.Argv(expandAll(spec.Command, vars), expandAll(spec.Args, vars))
	if err != nil {
		c.configErr, c.configWhy = "RunContainerError", err.Error()
		return c
	}
	mounts, err := containerMounts(spec, volumes)
	if err != nil {
		c.configErr, c.configWhy = "CreateContainerConfigError", err.Error()
		return c
	}
	sb, err := newSandbox(rt.netnsPath, rt.hostname, spec, mounts)
	if err != nil {
		c.configErr, c.configWhy = "CreateContainerConfigError", err.Error()
		return c
	}
	c.argv, c.env, c.sandbox = argv, vars.list(), sb
	return c
}

// supervise runs the container until it is done for good or the pod
// stops. An init container is done at its first success.
func (c *container) supervise() {
	if c.configErr != "" {
		c.mu.Lock()
		c.waitReason, c.waitMessage = c.configErr, c.configWhy
		c.k.events.Event(c.rt.ref, corev1.EventTypeWarning, "Failed", fmt.Sprintf("container %s: %s: %s", c.spec.Name, c.configErr, c.configWhy))
		c.mu.Unlock()
		c.k.queue.Add(c.rt.key)
		<-c.rt.stopCh
		return
	}
	backoff := backoffInitial
	for {
		if err := c.start(); err != nil {
			if c.rt.isStopping() {
				return
			}
			// A command that cannot start ends like one that exits at
			// once with 128, as a runtime reports StartError.
			c.k.log.Error(err, "starting a container", "pod", c.rt.key, "container", c.spec.Name)
			c.k.events.Event(c.rt.ref, corev1.EventTypeWarning, "Failed", fmt.Sprintf("Error starting container %s: %v", c.spec.Name, err))
			now := metav1.Now().Rfc3339Copy()
			c.mu.Lock()
			c.current = &corev1.ContainerStateTerminated{
				ExitCode: 128, Reason: "StartError", Message: err.Error(),
				StartedAt: now, FinishedAt: now, ContainerID: c.containerID(),
			}
			c.mu.Unlock()
		} else {
			c.k.events.Event(c.rt.ref, corev1.EventTypeNormal, "Started", "Started container "+c.spec.Name)
			c.k.queue.Add(c.rt.key)
			c.wait()
		}
		stopping := c.rt.isStopping()
		c.mu.Lock()
		again := !stopping && c.restarts(c.current.ExitCode)
		if !again {
			c.done = !stopping
			c.mu.Unlock()
			c.k.queue.Add(c.rt.key)
			return
		}
		c.waitReason, c.waitMessage = "CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed container %s", backoff, c.spec.Name)
		c.k.events.Event(c.rt.ref, corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container "+c.spec.Name)
		c.mu.Unlock()
		c.k.queue.Add(c.rt.key)
		select {
		case <-c.rt.stopCh:
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, backoffMax)
		c.mu.Lock()
		c.restartCount++
		c.mu.Unlock()
	}
}

// restarts reports whether an exit with code leads to a restart: init
// containers rerun until they succeed unless the pod never restarts.
func (c *container) restarts(code int32) bool {
	switch c.restart {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	if c.init {
		return code != 0
	}
	return true
}

// start starts the process in the pod's namespaces, its output appended
// to the container's log file.
func (c *container) start() error {
	logFile, err := os.OpenFile(filepath.Join(c.rt.logDir, c.spec.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("opening the container log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(c.argv[0], c.argv[1:]...)
	cmd.Env = c.env
	cmd.Dir = "/"
	if c.spec.WorkingDir != "" {
		cmd.Dir = c.spec.WorkingDir
	}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so stopping the container stops its
	// children too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rt.isStopping() {
		return fmt.Errorf("pod %s is stopping", c.rt.key)
	}
	if err := c.sandbox.start(cmd.Start); err != nil {
		return fmt.Errorf("starting %v: %w", c.argv, err)
	}
	c.proc = cmd.Process
	c.running = true
	c.startedAt = metav1.Now().Rfc3339Copy()
	c.waitReason, c.waitMessage = "", ""
	if c.current != nil {
		c.last = c.current
	}
	c.current = nil
	c.ready = c.spec.ReadinessProbe == nil
	return nil
}

// wait waits for the process and records how it ended.
func (c *container) wait() {
	state, err := c.proc.Wait()
	code := int32(-1)
	reason := "Error"
	if err == nil {
		ws := state.Sys().(syscall.WaitStatus)
		switch {
		case ws.Signaled():
			code = 128 + int32(ws.Signal())
		default:
			code = int32(ws.ExitStatus())
		}
		if code == 0 {
			reason = "Completed"
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.running, c.ready, c.proc = false, false, nil
	c.current = &corev1.ContainerStateTerminated{
		ExitCode: code, Reason: reason,
		StartedAt: c.startedAt, FinishedAt: metav1.Now().Rfc3339Copy(),
		ContainerID: c.containerID(),
	}
}

// signal sends sig to the container's process group.
func (c *container) signal(sig syscall.Signal) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.proc != nil {
		_ = syscall.Kill(-c.proc.Pid, sig)
	}
}

func (c *container) exitCode() int32 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.current == nil {
		return -1
	}
	return c.current.ExitCode
}

func (c *container) isDone() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.done
}

func (c *container) containerID() string {
	return fmt.Sprintf("netns://%s-%s-%d", c.rt.uid, c.spec.Name, c.restartCount)
}

// status is the container's entry in the pod status.
func (c *container) status() corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := corev1.ContainerStatus{
		Name:         c.spec.Name,
		Image:        c.spec.Image,
		ImageID:      "netns://" + c.spec.Image,
		RestartCount: c.restartCount,
		Ready:        c.running && c.ready,
	}
	started := c.running
	s.Started = &started
	switch {
	case c.running:
		s.ContainerID = c.containerID()
		s.State.Running = &corev1.ContainerStateRunning{StartedAt: c.startedAt}
	case c.done && c.current != nil:
		s.ContainerID = c.current.ContainerID
		s.State.Terminated = c.current.DeepCopy()
	default:
		reason := c.waitReason
		if reason == "" {
			reason = "ContainerCreating"
		}
		s.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: c.waitMessage}
	}
	prev := c.last
	if !c.running && !c.done && c.current != nil {
		prev = c.current
	}
	if prev != nil {
		s.LastTerminationState.Terminated = prev.DeepCopy()
	}
	return s
}

func (rt *podRuntime) isStopping() bool {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.stopping
}
