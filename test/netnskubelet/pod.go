package netnskubelet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
)

// podRuntime is what runs for one pod: its sandbox (a network namespace
// set up by CNI, or the node's own for hostNetwork pods) and a supervisor
// per container.
type podRuntime struct {
	key, namespace, name string
	uid                  types.UID
	// ref names the pod in Events.
	ref *corev1.ObjectReference
	// netnsName is the pod's own namespace; empty for hostNetwork pods.
	netnsName string
	// netnsPath is where the containers run: the pod's namespace or the
	// node's.
	netnsPath string
	hostname  string
	ips       []netip.Addr
	startTime metav1.Time
	logDir    string
	cniConf   *libcni.RuntimeConf

	mu          sync.Mutex
	inits       []*container
	apps        []*container
	initsDone   bool
	initsFailed bool
	stopping    bool
	// released is set once the sandbox of a finished pod is torn down.
	released bool
	stopCh   chan struct{}
	wg       sync.WaitGroup
}

// syncPod brings what runs for the pod at key in line with its object,
// then writes the pod's status.
func (k *Kubelet) syncPod(ctx context.Context, key string) error {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return fmt.Errorf("splitting key %q: %w", key, err)
	}
	pod, err := k.lister.Pods(namespace).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("reading pod %s from the cache: %w", key, err)
	}
	k.mu.Lock()
	rt := k.pods[key]
	k.mu.Unlock()
	if pod == nil || apierrors.IsNotFound(err) {
		if rt != nil {
			k.terminate(rt, 0) // force-deleted: nothing to wait for
		}
		return nil
	}
	if rt != nil && rt.uid != pod.UID {
		// A new pod under the name of one we still run: it starts once
		// the old one is gone.
		k.terminate(rt, 0)
		return nil
	}

	if pod.DeletionTimestamp != nil {
		if rt != nil {
			grace := defaultTerminateWait
			if pod.DeletionGracePeriodSeconds != nil {
				grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
			}
			k.terminate(rt, grace)
			return nil
		}
		// The kubelet has the last word: the object goes once nothing
		// runs, and only the pod we stopped (not a successor of the same
		// name).
		err := k.cfg.Client.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{
			GracePeriodSeconds: new(int64),
			Preconditions:      &metav1.Preconditions{UID: &pod.UID},
		})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return fmt.Errorf("deleting pod %s: %w", key, err)
		}
		return nil
	}
	if rt == nil {
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			return nil // finished before we knew it: never run it again
		}
		rt, err = k.startPod(ctx, pod)
		if err != nil {
			return err
		}
	}
	if rt.finished() {
		k.releaseSandbox(ctx, rt)
	}
	return k.writeStatus(ctx, pod, rt)
}

// startPod creates the pod's sandbox and starts its containers.
func (k *Kubelet) startPod(ctx context.Context, pod *corev1.Pod) (*podRuntime, error) {
	key := pod.Namespace + "/" + pod.Name
	rt := &podRuntime{
		key: key, namespace: pod.Namespace, name: pod.Name, uid: pod.UID,
		ref:       &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID, ResourceVersion: pod.ResourceVersion},
		hostname:  podHostname(pod),
		startTime: metav1.Now().Rfc3339Copy(),
		logDir:    filepath.Join(k.cfg.StateDir, "pods", fmt.Sprintf("%s_%s_%s", pod.Namespace, pod.Name, pod.UID)),
		stopCh:    make(chan struct{}),
	}
	if err := os.MkdirAll(rt.logDir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the log directory of %s: %w", key, err)
	}
	if pod.Spec.HostNetwork {
		rt.netnsPath = k.cfg.NodeNetns
		rt.hostname = k.cfg.NodeName
		rt.ips = k.cfg.NodeIPs
	} else {
		rt.netnsName = fmt.Sprintf("%s-%s", k.cfg.NetnsPrefix, strings.ReplaceAll(string(pod.UID), "-", "")[:12])
		rt.netnsPath = filepath.Join(NetnsDir, rt.netnsName)
		rt.cniConf = runtimeConf(rt.netnsPath, string(pod.UID), pod.Namespace, pod.Name, string(pod.UID), pod.Annotations[PodIPsAnnotation])
		if err := runIP("netns", "add", rt.netnsName); err != nil {
			return nil, fmt.Errorf("creating the network namespace of %s: %w", key, err)
		}
		// No duplicate address detection on the pod's link (the node
		// hands out each address once): an IPv6 address is usable as
		// soon as CNI ADD returns, not a second later.
		for _, sysctl := range []string{"net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"} {
			if err := SetSysctlIn(rt.netnsPath, sysctl, "0"); err != nil {
				_ = runIP("netns", "delete", rt.netnsName)
				return nil, fmt.Errorf("pod %s: sysctl %s: %w", key, sysctl, err)
			}
		}
		ips, err := k.cni.add(ctx, k.cfg.NodeNetns, rt.cniConf)
		if err != nil {
			_ = k.cni.del(ctx, k.cfg.NodeNetns, rt.cniConf)
			_ = runIP("netns", "delete", rt.netnsName)
			k.events.Event(rt.ref, corev1.EventTypeWarning, "FailedCreatePodSandBox", err.Error())
			return nil, fmt.Errorf("setting up the network of %s: %w", key, err)
		}
		rt.ips = ips
	}
	env := newEnvResolver(ctx, k, pod, rt)
	volumes, err := k.prepareVolumes(ctx, pod, rt, env)
	if err != nil {
		if rt.netnsName != "" {
			_ = k.cni.del(ctx, k.cfg.NodeNetns, rt.cniConf)
			_ = runIP("netns", "delete", rt.netnsName)
		}
		k.events.Event(rt.ref, corev1.EventTypeWarning, "FailedMount", err.Error())
		return nil, fmt.Errorf("preparing the volumes of %s: %w", key, err)
	}
	for _, c := range pod.Spec.InitContainers {
		rt.inits = append(rt.inits, k.newContainer(pod, rt, c, true, env, volumes))
	}
	for _, c := range pod.Spec.Containers {
		rt.apps = append(rt.apps, k.newContainer(pod, rt, c, false, env, volumes))
	}
	k.mu.Lock()
	k.pods[key] = rt
	k.mu.Unlock()
	rt.wg.Go(func() { k.runPod(rt) })
	k.log.Info("pod started", "pod", key, "ips", fmt.Sprint(rt.ips), "netns", rt.netnsName)
	return rt, nil
}

// runPod runs the init containers one after the other, each to success,
// then every app container.
func (k *Kubelet) runPod(rt *podRuntime) {
	for _, c := range rt.inits {
		c.supervise()
		if c.exitCode() != 0 {
			rt.mu.Lock()
			rt.initsFailed = !rt.stopping
			rt.mu.Unlock()
			k.queue.Add(rt.key)
			return
		}
	}
	rt.mu.Lock()
	rt.initsDone = true
	stopping := rt.stopping
	rt.mu.Unlock()
	k.queue.Add(rt.key)
	if stopping {
		return
	}
	for _, c := range rt.apps {
		rt.wg.Go(c.supervise)
		if c.spec.ReadinessProbe != nil || c.spec.LivenessProbe != nil {
			rt.wg.Go(func() { k.probe(c) })
		}
	}
}

// finished reports whether nothing will ever run again in the pod.
func (rt *podRuntime) finished() bool {
	// Container locks are never taken under rt.mu (start takes them the
	// other way round).
	rt.mu.Lock()
	failed, initsDone := rt.initsFailed, rt.initsDone
	rt.mu.Unlock()
	if failed {
		return true
	}
	if !initsDone {
		return false
	}
	for _, c := range rt.apps {
		if !c.isDone() {
			return false
		}
	}
	return true
}

// terminate stops the pod's containers (SIGTERM, then SIGKILL after
// grace), tears its network down, forgets it and queues its key again, in
// the background: a pod that takes its whole grace period to stop holds no
// worker. Asked again with grace 0 (a forced deletion), it kills at once.
func (k *Kubelet) terminate(rt *podRuntime, grace time.Duration) {
	all := append(append([]*container{}, rt.inits...), rt.apps...)
	rt.mu.Lock()
	already := rt.stopping
	rt.stopping = true
	rt.mu.Unlock()
	if already {
		if grace == 0 {
			for _, c := range all {
				c.signal(syscall.SIGKILL)
			}
		}
		return
	}
	close(rt.stopCh)
	for _, c := range all {
		c.signal(syscall.SIGTERM)
	}
	k.terminations.Go(func() {
		done := make(chan struct{})
		go func() {
			rt.wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(grace):
			for _, c := range all {
				c.signal(syscall.SIGKILL)
			}
			<-done
		}
		k.releaseSandbox(context.Background(), rt)
		k.mu.Lock()
		if k.pods[rt.key] == rt {
			delete(k.pods, rt.key)
		}
		k.mu.Unlock()
		k.log.Info("pod stopped", "pod", rt.key)
		// The next sync deletes the object, or starts a successor of
		// the same name.
		k.queue.Add(rt.key)
	})
}

// releaseSandbox kills whatever still runs in the pod's namespace (exec
// sessions, orphans of the containers), runs CNI DEL and deletes the
// namespace. A hostNetwork pod has no sandbox of its own.
func (k *Kubelet) releaseSandbox(ctx context.Context, rt *podRuntime) {
	rt.mu.Lock()
	if rt.released {
		rt.mu.Unlock()
		return
	}
	rt.released = true
	rt.mu.Unlock()
	if rt.netnsName == "" {
		return
	}
	KillProcessesIn(rt.netnsPath)
	// Bounded: a DEL that hangs must not hold the node's worker forever.
	delCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := k.cni.del(delCtx, k.cfg.NodeNetns, rt.cniConf); err != nil {
		k.log.Error(err, "tearing down the pod network", "pod", rt.key)
	}
	if err := runIP("netns", "delete", rt.netnsName); err != nil {
		k.log.Error(err, "deleting the pod namespace", "pod", rt.key)
	}
}

// stopAllPods stops every pod, as a node shutting down does, and waits
// until they are gone.
func (k *Kubelet) stopAllPods() {
	k.mu.Lock()
	rts := make([]*podRuntime, 0, len(k.pods))
	for _, rt := range k.pods {
		rts = append(rts, rt)
	}
	k.mu.Unlock()
	for _, rt := range rts {
		k.terminate(rt, 5*time.Second)
	}
	k.terminations.Wait()
}

// podHostname is the hostname a pod's containers see.
func podHostname(pod *corev1.Pod) string {
	h := pod.Name
	if pod.Spec.Hostname != "" {
		h = pod.Spec.Hostname
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}

// exitCode turns a finished command's error into its exit code: -1 when
// it did not exit (it could not start, or a signal killed it, which the
// code reports as 128+signal like a shell).
func exitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return -1
}
