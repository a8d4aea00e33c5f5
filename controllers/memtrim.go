package controllers

import (
	"context"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftpol/nftpol/nft"
)

// trimElements is the size of a commit, in elements added and deleted,
// after which the agent returns its free heap to the system: a set of
// every pod of a large cluster (a ClusterNetworkPolicy peer of every
// namespace) passes through the model, the compiled table and the netlink
// batch, and leaves the heap grown by several times its size. The Go
// runtime hands such memory back only slowly, and only down to twice the
// live heap; a node's memory accounting (and the pod's limit) sees it all
// the while.
const trimElements = 10_000

// memoryTrim returns the free heap to the system after large commits: at
// once after the first (the initial lists of every pod and policy of the
// cluster are garbage by then), later ones a few seconds after, so that a
// burst of changes is one trim, and at most once per interval. Each trim
// is one forced collection (debug.FreeOSMemory), off the sync loop.
type memoryTrim struct {
	// large has a value when a large commit waits for its trim.
	large chan time.Duration // how long to wait before trimming
	// settle is the wait after a large commit other than the first;
	// interval the least time between two trims.
	settle, interval time.Duration
	// free returns the memory; debug.FreeOSMemory outside tests.
	free func()
	log  logr.Logger
}

func newMemoryTrim(log logr.Logger) *memoryTrim {
	return &memoryTrim{large: make(chan time.Duration, 1), settle: 5 * time.Second, interval: 30 * time.Second,
		free: debug.FreeOSMemory, log: log}
}

// committed tells the trim of a successful commit; first is whether it was
// the agent's first.
func (t *memoryTrim) committed(stats nft.CommitStats, first bool) {
	if t == nil || !first && stats.ElementsAdded+stats.ElementsDeleted < trimElements {
		return
	}
	wait := t.settle
	if first {
		wait = 0
	}
	select {
	case t.large <- wait:
	default: // a trim is pending already
	}
}

// run trims after large commits until ctx ends.
func (t *memoryTrim) run(ctx context.Context) error {
	for {
		var wait time.Duration
		select {
		case <-ctx.Done():
			return nil
		case wait = <-t.large:
		}
		if !sleepCtx(ctx, wait) {
			return nil
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		t.free()
		runtime.ReadMemStats(&after)
		t.log.V(1).Info("returned free memory to the system after a large commit",
			"MiB", (int64(after.HeapReleased)-int64(before.HeapReleased))>>20,
			"heapInUseMiB", after.HeapInuse>>20, "duration", time.Since(start).Round(time.Millisecond))
		if !sleepCtx(ctx, t.interval) {
			return nil
		}
	}
}

// sleepCtx waits d, or until ctx ends; it reports whether ctx is still
// live.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-timer.C:
		return true
	}
}
