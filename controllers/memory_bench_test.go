package controllers

import (
	"fmt"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// BenchmarkAgentMemory measures, in process, the live heap of what the
// agent keeps at 100k pods / 10k policies (selectorstest.ScaleCluster, as
// BenchmarkScale), stage by stage along the agent's own path: the pods as
// the API server's decoder hands them over (fresh strings and maps per
// object, managed fields and all), through the cache transform into an
// indexer like the informer's (namespace index), handed to the Builder as
// cacheState does, then one model and its compiled ruleset (kept, as the
// syncer keeps the last one). Each figure is the live heap after a full
// GC, per pod. The black-box RSS at 100k is BenchmarkScale's (writing 100k
// pods to the API server takes minutes); this isolates the stages.
// Last, a full resync (every pod decoded and transformed again, handed to
// the Builder, one model and ruleset) with no forced collection: the GC cycles
// and CPU it costs under the process's GOGC and GOMEMLIMIT, to weigh a GC
// policy.
//
// NFTPOL_MEM_PROFILE=file writes a heap profile of the end state.
func BenchmarkAgentMemory(b *testing.B) {
	for _, size := range []struct{ pods, policies int }{{10_000, 1_000}, {100_000, 10_000}} {
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size.pods, size.policies), func(b *testing.B) {
			for b.Loop() {
				measureAgentMemory(b, size.pods, size.policies)
			}
		})
	}
}

func measureAgentMemory(b *testing.B, nPods, nPolicies int) {
	state := selectorstest.ScaleCluster(nPods, nPolicies, 110)
	var pods []*selectors.Pod
	pods, state.Pods = state.Pods, nil
	base := liveHeap()

	trimmer := newPodTrimmer()
	store := toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
	for i, p := range pods {
		obj, err := trimmer.Transform(decodedPod(p, i))
		if err != nil {
			b.Fatal(err)
		}
		if err := store.Add(obj); err != nil {
			b.Fatal(err)
		}
	}
	cached := liveHeap()
	// The input goes; only the store's pods remain.
	runtime.KeepAlive(pods)
	pods = nil
	dropped := liveHeap()

	// The policies as their informer keeps them: decoded copies, trimmed.
	policies := toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
	policyTrimmer := newPolicyTrimmer()
	for _, np := range state.Policies {
		obj, _ := policyTrimmer.Transform(np.DeepCopy())
		if err := policies.Add(obj); err != nil {
			b.Fatal(err)
		}
	}
	withPolicies := liveHeap()
	// The model reads the store's policies, as cacheState does; the
	// input's go.
	state.Policies = state.Policies[:0]
	for _, obj := range policies.List() {
		state.Policies = append(state.Policies, obj.(*networkingv1.NetworkPolicy))
	}
	swapped := liveHeap()

	builder := selectors.NewBuilder()
	for _, obj := range store.List() {
		if p, ok := modelPod(obj); ok {
			builder.SetPod(p)
		}
	}
	for _, np := range state.Policies {
		builder.SetPolicy(np)
	}
	built := liveHeap()
	goal := make([]metrics.Sample, 1)
	goal[0].Name = "/gc/heap/goal:bytes"

	compiler, err := nft.NewCompiler(nft.Config{})
	if err != nil {
		b.Fatal(err)
	}
	model, _ := builder.BuildFromEvents(selectorstest.ScaleNode, state)
	ruleset := compiler.Compile(model)
	compiled := liveHeap()

	metrics.Read(goal)

	perPod := func(from, to uint64) float64 { return float64(int64(to)-int64(from)) / float64(nPods) }
	b.ReportMetric(perPod(base, cached), "cache-B/pod")
	b.ReportMetric(perPod(swapped, built), "builder-B/pod")
	b.ReportMetric(perPod(built, compiled), "model+ruleset-B/pod")
	total := (cached - base) + (withPolicies - dropped) + (compiled - swapped)
	b.ReportMetric(mib(total), "live-MiB")
	b.ReportMetric(mib(goal[0].Value.Uint64()), "heap-goal-MiB")
	b.Logf("%d pods: live heap: pod cache %.1f MiB, + policy cache %.1f MiB, + Builder %.1f MiB, + model and ruleset %.1f MiB = %.1f MiB; the whole test process's heap goal (GOGC=%s) %.1f MiB",
		nPods, mib(cached-base), mib(withPolicies-dropped), mib(built-swapped), mib(compiled-built), mib(total), os.Getenv("GOGC"), mib(goal[0].Value.Uint64()))
	// A full resync as the agent goes through it with this heap: every
	// pod decoded again (a relist hands new objects) through the cache
	// transform into the store and to the Builder as an event (the old
	// pods become garbage as their new objects come), one model and
	// ruleset, with no forced collection: the GC cycles and the CPU
	// the GC policy (GOGC, GOMEMLIMIT) costs for it. The runtime's own GC
	// CPU figure is only brought up to date by a collection, so the CPU is
	// the process's (getrusage): compare runs of one binary side by side.
	cpuBefore, gcBefore := processCPU(), gcCycles()
	for i, obj := range store.List() {
		p, _ := modelPod(obj)
		fresh, err := trimmer.Transform(decodedPod(p, i))
		if err != nil {
			b.Fatal(err)
		}
		if err := store.Update(fresh); err != nil {
			b.Fatal(err)
		}
		p, _ = modelPod(fresh)
		builder.SetPod(p)
	}
	model, _ = builder.BuildFromEvents(selectorstest.ScaleNode, state)
	ruleset = compiler.Compile(model)
	goal[0].Name = "/gc/heap/goal:bytes"
	metrics.Read(goal)
	b.ReportMetric(gcCycles()-gcBefore, "resync-gc-cycles")
	b.ReportMetric((processCPU()-cpuBefore)*1000, "resync-cpu-ms")
	b.ReportMetric(mib(goal[0].Value.Uint64()), "resync-heap-goal-MiB")
	if path := os.Getenv("NFTPOL_MEM_PROFILE"); path != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", path, nPods))
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	runtime.KeepAlive(store)
	runtime.KeepAlive(builder)
	runtime.KeepAlive(ruleset)
	runtime.KeepAlive(policies)
}

// decodedPod is the pod as the API server's answer decodes: every string
// and map its own allocation, and the fields the agent drops present.
func decodedPod(p *selectors.Pod, i int) *corev1.Pod {
	labels := make(map[string]string, len(p.Labels))
	for k, v := range p.Labels {
		labels[strings.Clone(k)] = strings.Clone(v)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: strings.Clone(p.Namespace), Name: strings.Clone(p.Name), Labels: labels,
			UID:               types.UID(fmt.Sprintf("%08x-0000-4000-8000-%012x", i, i)),
			ResourceVersion:   fmt.Sprint(1000 + i),
			CreationTimestamp: metav1.Now(),
			ManagedFields:     []metav1.ManagedFieldsEntry{{Manager: "kubelet", Operation: metav1.ManagedFieldsOperationUpdate, FieldsType: "FieldsV1"}},
		},
		Spec:   corev1.PodSpec{NodeName: strings.Clone(p.NodeName), Containers: []corev1.Container{{Name: "c", Image: "registry/app:1"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IPs[0].String()},
	}
	for _, port := range p.Ports {
		pod.Spec.Containers[0].Ports = append(pod.Spec.Containers[0].Ports, corev1.ContainerPort{
			Name: strings.Clone(port.Name), ContainerPort: int32(port.Port), Protocol: corev1.Protocol(strings.ToUpper(port.Protocol.String()))})
	}
	for _, ip := range p.IPs {
		pod.Status.PodIPs = append(pod.Status.PodIPs, corev1.PodIP{IP: ip.String()})
	}
	return pod
}

// gcCycles is the number of GC cycles so far.
func gcCycles() float64 {
	samples := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
	metrics.Read(samples)
	return float64(samples[0].Value.Uint64())
}

// processCPU is the CPU time the process used so far, user and system,
// in seconds.
func processCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// liveHeap is the heap in use after a full collection.
func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }
