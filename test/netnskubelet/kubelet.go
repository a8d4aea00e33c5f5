package netnskubelet

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// Config describes one node's kubelet.
type Config struct {
	// NodeName is the Node object's name and the pods' spec.nodeName.
	NodeName string
	// NodeNetns is the node's network namespace (a path under
	// /run/netns): hostNetwork pods run there, CNI plugins run there (so
	// the host ends of pod links land in it) and probes start there.
	NodeNetns string
	// NodeIPs are the node's InternalIPs, its addresses inside NodeNetns,
	// one per family, the primary first.
	NodeIPs []netip.Addr
	// PodCIDRs are the node's pod ranges in the same family order,
	// registered as spec.podCIDRs and handed to host-local.
	PodCIDRs []netip.Prefix
	// ServeAddr is the host:port of the kubelet endpoint (exec, logs) in
	// the kubelet's own network namespace, which the API server must
	// reach: the node reports the host as its InternalDNS address and the
	// port as daemonEndpoints.kubeletEndpoint, so the API server runs
	// with --kubelet-preferred-address-types=InternalDNS.
	ServeAddr string
	// TLS serves the kubelet endpoint (certificate, client CAs).
	TLS *tls.Config
	// Client talks to the API server.
	Client kubernetes.Interface
	// CNIBinDir holds the CNI plugins (ptp or bridge, host-local,
	// loopback).
	CNIBinDir string
	// CNI is the plugin that links pods to the node: "ptp" (the default)
	// or "bridge".
	CNI string
	// StateDir holds the CNI state, IPAM state and container logs of this
	// node, and its root (StateDir/root): the node's own /etc/cni,
	// /opt/cni and /run (see nodeOwnDirs).
	StateDir string
	// NetnsPrefix names pod namespaces "<NetnsPrefix>-<pod uid prefix>".
	NetnsPrefix string
	// Images maps images to binaries.
	Images Images
	// Version is reported as the node's kubelet version.
	Version string
	// Log receives the kubelet's log.
	Log logr.Logger
}

// The heartbeat: the lease is what the node lifecycle controller watches;
// the status is refreshed less often, as the real kubelet does.
const (
	leaseDuration        = 40 * time.Second
	leaseRenewInterval   = 10 * time.Second
	nodeStatusInterval   = time.Minute
	podResyncInterval    = 30 * time.Second
	defaultTerminateWait = 30 * time.Second
	workers              = 4
)

// Kubelet runs one node's pods. Create it with New and start it with Run.
type Kubelet struct {
	cfg    Config
	log    logr.Logger
	lister corelisters.PodLister
	queue  workqueue.TypedRateLimitingInterface[string]
	cni    *cniNetwork
	// events records what `kubectl describe pod` shows: containers
	// started, failing, backing off, unhealthy; sandboxes that failed.
	events record.EventRecorder

	mu   sync.Mutex
	pods map[string]*podRuntime // by "namespace/name"
	// terminations are the pods being stopped in the background.
	terminations sync.WaitGroup

	ready chan struct{}
}

// New checks the configuration and prepares the node's state directory.
func New(cfg Config) (*Kubelet, error) {
	if cfg.NodeName == "" || cfg.NodeNetns == "" || len(cfg.NodeIPs) == 0 || len(cfg.PodCIDRs) == 0 {
		return nil, errors.New("netnskubelet: NodeName, NodeNetns, NodeIPs and PodCIDRs are required")
	}
	if cfg.Client == nil || cfg.TLS == nil || cfg.ServeAddr == "" {
		return nil, errors.New("netnskubelet: Client, TLS and ServeAddr are required")
	}
	if cfg.NetnsPrefix == "" {
		cfg.NetnsPrefix = "netnskubelet"
	}
	if cfg.Log.GetSink() == nil {
		cfg.Log = logr.Discard()
	}
	cni, err := newCNINetwork(cfg.CNIBinDir, filepath.Join(cfg.StateDir, "cni"), nodeRoot(filepath.Join(cfg.StateDir, "root")), cfg.CNI, cfg.PodCIDRs)
	if err != nil {
		return nil, err
	}
	return &Kubelet{
		cfg:   cfg,
		log:   cfg.Log.WithValues("node", cfg.NodeName),
		cni:   cni,
		pods:  map[string]*podRuntime{},
		ready: make(chan struct{}),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](200*time.Millisecond, 10*time.Second),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods-" + cfg.NodeName}),
	}, nil
}

// Ready is closed once the node is registered, the endpoint serves and the
// pod cache has synced.
func (k *Kubelet) Ready() <-chan struct{} { return k.ready }

// Run registers the node and runs its pods until ctx ends; then it stops
// every pod (processes, CNI DEL, namespace) before returning. The Node
// object stays, as a stopped kubelet's does.
func (k *Kubelet) Run(ctx context.Context) error {
	if err := os.MkdirAll(k.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("creating the state directory: %w", err)
	}
	l, err := net.Listen("tcp", k.cfg.ServeAddr)
	if err != nil {
		return fmt.Errorf("listening for the kubelet endpoint on %s: %w", k.cfg.ServeAddr, err)
	}
	srv := &http.Server{Handler: k.handler(), TLSConfig: k.cfg.TLS, ReadHeaderTimeout: 10 * time.Second}
	srvDone := make(chan struct{})
	go func() {
		defer close(srvDone)
		if err := srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			k.log.Error(err, "kubelet endpoint stopped")
		}
	}()
	defer func() {
		_ = srv.Close()
		<-srvDone
	}()

	port, err := strconv.Atoi(portOf(l.Addr().String()))
	if err != nil {
		return fmt.Errorf("reading the endpoint port: %w", err)
	}
	node, err := k.registerNode(ctx, int32(port))
	if err != nil {
		return err
	}

	factory := informers.NewSharedInformerFactoryWithOptions(k.cfg.Client, podResyncInterval,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", k.cfg.NodeName).String()
		}))
	podInformer := factory.Core().V1().Pods()
	k.lister = podInformer.Lister()
	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    k.enqueue,
		UpdateFunc: func(_, obj any) { k.enqueue(obj) },
		DeleteFunc: k.enqueue,
	}); err != nil {
		return fmt.Errorf("watching pods: %w", err)
	}
	informerCtx, stopInformers := context.WithCancel(context.Background())
	defer stopInformers()
	broadcaster := record.NewBroadcaster(record.WithContext(informerCtx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: k.cfg.Client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	k.events = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: k.cfg.NodeName})
	factory.Start(informerCtx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.Informer().HasSynced) {
		return fmt.Errorf("node %s: pod cache did not sync: %w", k.cfg.NodeName, ctx.Err())
	}

	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for k.processNext(ctx) {
			}
		})
	}
	wg.Go(func() { k.heartbeat(ctx, node) })
	k.log.Info("node ready", "endpoint", l.Addr().String(), "podCIDRs", fmt.Sprint(k.cfg.PodCIDRs))
	close(k.ready)

	<-ctx.Done()
	k.queue.ShutDown()
	wg.Wait()
	k.stopAllPods()
	k.cni.close()
	return nil
}

func portOf(hostport string) string {
	_, port, _ := net.SplitHostPort(hostport)
	return port
}

func (k *Kubelet) enqueue(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		k.log.Error(err, "cannot key a pod event")
		return
	}
	k.queue.Add(key)
}

// processNext syncs one pod; the queue never hands the same key to two
// workers at once, so a pod's runtime is only touched by one sync.
func (k *Kubelet) processNext(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if err := k.syncPod(ctx, key); err != nil {
		// A conflict only means our cache was behind a write: the next
		// sync reads the newer object.
		if ctx.Err() == nil && !apierrors.IsConflict(err) {
			k.log.Error(err, "pod sync failed; retrying", "pod", key)
		}
		k.queue.AddRateLimited(key)
		return true
	}
	k.queue.Forget(key)
	return true
}

// registerNode creates the Node, or takes over an existing one of the same
// name, and writes its status.
func (k *Kubelet) registerNode(ctx context.Context, port int32) (*corev1.Node, error) {
	nodes := k.cfg.Client.CoreV1().Nodes()
	want := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: k.cfg.NodeName,
			Labels: map[string]string{
				"kubernetes.io/hostname": k.cfg.NodeName,
				"kubernetes.io/os":       "linux",
				"kubernetes.io/arch":     goarch(),
			},
		},
		Spec: corev1.NodeSpec{
			PodCIDR:  k.cfg.PodCIDRs[0].String(),
			PodCIDRs: prefixStrings(k.cfg.PodCIDRs),
		},
	}
	var node *corev1.Node
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
		created, err := nodes.Create(ctx, want, metav1.CreateOptions{})
		if err == nil {
			node = created
			return true, nil
		}
		if apierrors.IsAlreadyExists(err) {
			node, err = nodes.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
			if err == nil {
				return true, nil
			}
		}
		k.log.V(1).Info("registering the node", "err", err.Error())
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("registering node %s: %w", k.cfg.NodeName, err)
	}
	node.Status = k.nodeStatus(port, node.Status)
	updated, err := nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("writing the status of node %s: %w", k.cfg.NodeName, err)
	}
	return updated, nil
}

// nodeStatus is the node's status: the InternalIP inside the node's
// namespace (what kube-proxy and NetworkPolicy use), the endpoint host as
// InternalDNS (what the API server dials), capacity and conditions.
func (k *Kubelet) nodeStatus(port int32, old corev1.NodeStatus) corev1.NodeStatus {
	host, _, _ := net.SplitHostPort(k.cfg.ServeAddr)
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		c := corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
		for _, o := range old.Conditions {
			if o.Type == t && o.Status == s {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		return c
	}
	res := resources()
	var addrs []corev1.NodeAddress
	for _, a := range k.cfg.NodeIPs {
		addrs = append(addrs, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a.String()})
	}
	addrs = append(addrs,
		corev1.NodeAddress{Type: corev1.NodeHostName, Address: k.cfg.NodeName},
		corev1.NodeAddress{Type: corev1.NodeInternalDNS, Address: host})
	return corev1.NodeStatus{
		Capacity:    res,
		Allocatable: res,
		Phase:       corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
			cond(corev1.NodeNetworkUnavailable, corev1.ConditionFalse, "RouteCreated", "pod routes are set up with the node's namespace"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "netnskubelet is posting ready status"),
		},
		Addresses:       addrs,
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: port}},
		NodeInfo: corev1.NodeSystemInfo{
			MachineID:               k.cfg.NodeName,
			SystemUUID:              k.cfg.NodeName,
			BootID:                  bootID(),
			KernelVersion:           kernelVersion(),
			OSImage:                 "netnskubelet",
			ContainerRuntimeVersion: "netns://" + k.cfg.Version,
			KubeletVersion:          k.cfg.Version,
			KubeProxyVersion:        k.cfg.Version,
			OperatingSystem:         "linux",
			Architecture:            goarch(),
		},
	}
}

// heartbeat renews the node's lease and refreshes its status until ctx
// ends.
func (k *Kubelet) heartbeat(ctx context.Context, node *corev1.Node) {
	port := node.Status.DaemonEndpoints.KubeletEndpoint.Port
	lastStatus := time.Now()
	for {
		if err := k.renewLease(ctx, node); err != nil && ctx.Err() == nil {
			k.log.Error(err, "renewing the node lease")
		}
		if time.Since(lastStatus) >= nodeStatusInterval {
			if err := k.refreshNodeStatus(ctx, port); err != nil && ctx.Err() == nil {
				k.log.Error(err, "refreshing the node status")
			} else {
				lastStatus = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(leaseRenewInterval):
		}
	}
}

func (k *Kubelet) refreshNodeStatus(ctx context.Context, port int32) error {
	nodes := k.cfg.Client.CoreV1().Nodes()
	node, err := nodes.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading node %s: %w", k.cfg.NodeName, err)
	}
	node.Status = k.nodeStatus(port, node.Status)
	if _, err := nodes.UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("writing node %s status: %w", k.cfg.NodeName, err)
	}
	return nil
}

func prefixStrings(ps []netip.Prefix) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}
