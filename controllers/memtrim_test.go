package controllers

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftpol/nftpol/nft"
)

func TestMemoryTrimAsksAfterLargeCommits(t *testing.T) {
	large := nft.CommitStats{PlanStats: nft.PlanStats{ElementsAdded: trimElements / 2, ElementsDeleted: trimElements / 2}}
	small := nft.CommitStats{PlanStats: nft.PlanStats{ElementsAdded: trimElements - 1}}
	for _, tc := range []struct {
		name     string
		stats    nft.CommitStats
		first    bool
		wantWait time.Duration
		want     bool
	}{
		{"the first commit, at once", small, true, 0, true},
		{"a large commit, after settling", large, false, 5 * time.Second, true},
		{"a small commit", small, false, 0, false},
		{"an empty commit", nft.CommitStats{}, false, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newMemoryTrim(logr.Discard())
			tr.committed(tc.stats, tc.first)
			select {
			case wait := <-tr.large:
				if !tc.want || wait != tc.wantWait {
					t.Fatalf("asked for a trim after %s; want asked %v, after %s", wait, tc.want, tc.wantWait)
				}
			default:
				if tc.want {
					t.Fatal("no trim asked for")
				}
			}
		})
	}
	// A nil trim (a Syncer made without NewManager) does nothing.
	var none *memoryTrim
	none.committed(large, true)
}

func TestMemoryTrimOncePerInterval(t *testing.T) {
	var frees atomic.Int32
	tr := newMemoryTrim(logr.Discard())
	tr.settle, tr.interval = 10*time.Millisecond, time.Hour
	tr.free = func() { frees.Add(1) }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.run(ctx) }()
	large := nft.CommitStats{PlanStats: nft.PlanStats{ElementsAdded: trimElements}}

	tr.committed(large, true)
	deadline := time.Now().Add(5 * time.Second)
	for frees.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if frees.Load() != 1 {
		t.Fatalf("%d trims after the first commit, want 1", frees.Load())
	}
	// Within the interval, a burst of large commits is one pending trim,
	// not one each, and none runs before the interval ends.
	for range 5 {
		tr.committed(large, false)
	}
	time.Sleep(50 * time.Millisecond)
	if n := frees.Load(); n != 1 {
		t.Fatalf("%d trims within the interval, want 1", n)
	}
	if len(tr.large) != 1 {
		t.Fatalf("%d trims pending, want 1", len(tr.large))
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the trim did not stop with its context")
	}
}
