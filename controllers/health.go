package controllers

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"
)

// Defaults of the health thresholds (Options can change them).
const (
	// DefaultFailuresUntilUnready is how many syncs in a row must fail
	// before readiness says so. One failed commit is retried at once with
	// backoff; three in a row are no accident.
	DefaultFailuresUntilUnready = 3
	// DefaultSyncStuckAfter is how long one sync may run before liveness
	// fails and the kubelet restarts the agent. A full replace of a
	// 100k-pod table takes seconds (BENCHMARKS.md); a sync still running
	// after minutes is wedged (a netlink call that never returns, a
	// deadlock), and only a restart helps. The sync never waits for the
	// API server (it reads the informer cache), so an unreachable API
	// server cannot trip this.
	DefaultSyncStuckAfter = 3 * time.Minute
)

// syncHealth is what liveness and readiness know about the sync loop. The
// syncer writes it, the probes read it; all of it is atomic so that a probe
// never waits for a sync (a probe blocked behind a long commit would time
// out and count as a failure).
type syncHealth struct {
	failuresUntilUnready int64
	stuckAfter           time.Duration
	now                  func() time.Time

	// running is the start (Unix ns) of the sync in progress, 0 if none.
	running atomic.Int64
	// failures counts the syncs that failed since the last success.
	failures atomic.Int64
	// lastSuccess is the end (Unix ns) of the last successful sync, 0 if
	// none yet.
	lastSuccess atomic.Int64
	lastErr     atomic.Pointer[string]
}

func newSyncHealth(failuresUntilUnready int, stuckAfter time.Duration, now func() time.Time) *syncHealth {
	if failuresUntilUnready <= 0 {
		failuresUntilUnready = DefaultFailuresUntilUnready
	}
	if stuckAfter <= 0 {
		stuckAfter = DefaultSyncStuckAfter
	}
	if now == nil {
		now = time.Now
	}
	return &syncHealth{failuresUntilUnready: int64(failuresUntilUnready), stuckAfter: stuckAfter, now: now}
}

// begin marks the start of a sync.
func (h *syncHealth) begin() {
	h.running.Store(h.now().UnixNano())
}

// end marks the end of a sync and records its outcome; it returns the
// number of failed syncs in a row (0 after a success).
func (h *syncHealth) end(err error) int64 {
	defer h.running.Store(0)
	if err != nil {
		msg := err.Error()
		h.lastErr.Store(&msg)
		return h.failures.Add(1)
	}
	h.lastSuccess.Store(h.now().UnixNano())
	h.failures.Store(0)
	return 0
}

// synced reports whether a sync has ever succeeded.
func (h *syncHealth) synced() bool {
	return h.lastSuccess.Load() != 0
}

func (h *syncHealth) lastError() string {
	if p := h.lastErr.Load(); p != nil {
		return *p
	}
	return ""
}

// ready fails until the first sync commits, and while the last
// failuresUntilUnready or more syncs in a row failed; the next success
// makes it pass again. The error says why.
func (h *syncHealth) ready() error {
	last := h.lastSuccess.Load()
	if last == 0 {
		if msg := h.lastError(); msg != "" {
			return fmt.Errorf("no ruleset committed yet; last sync failed: %s", msg)
		}
		return errors.New("no ruleset committed yet")
	}
	if n := h.failures.Load(); n >= h.failuresUntilUnready {
		ago := h.now().Sub(time.Unix(0, last)).Round(time.Second)
		return fmt.Errorf("%d syncs in a row failed, last success %s ago (the table committed then stays in force): %s", n, ago, h.lastError())
	}
	return nil
}

// live fails when a sync has been running for longer than stuckAfter.
// Nothing else: failing syncs and an unreachable API server are readiness
// matters, a restart would not fix them.
func (h *syncHealth) live() error {
	start := h.running.Load()
	if start == 0 {
		return nil
	}
	if d := h.now().Sub(time.Unix(0, start)); d > h.stuckAfter {
		return fmt.Errorf("a sync has been running for %s (bound %s): the sync loop is wedged", d.Round(time.Second), h.stuckAfter)
	}
	return nil
}

// check is one named health check.
type check struct {
	name string
	fn   func() error
}

// healthHandler serves /healthz and /readyz. Unlike controller-runtime's
// handler, which withholds the reasons of failing checks, it prints them:
// "why is this agent not ready" should be one curl away.
func healthHandler(live, ready []check) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/healthz", checksHandler(live))
	mux.Handle("/readyz", checksHandler(ready))
	return mux
}

func checksHandler(checks []check) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		var b strings.Builder
		failed := false
		for _, c := range checks {
			if err := c.fn(); err != nil {
				failed = true
				fmt.Fprintf(&b, "[-]%s failed: %v\n", c.name, err)
			} else {
				fmt.Fprintf(&b, "[+]%s ok\n", c.name)
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if failed {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, b.String())
			return
		}
		fmt.Fprint(w, b.String(), "ok\n")
	}
}
