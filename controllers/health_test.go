package controllers

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftpol/nftpol/nft"
)

// fakeClock is a clock the test moves.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// TestSyncHealth walks the probes through the outcomes of syncs: readiness
// waits for the first commit, turns not ready after three failures in a
// row saying why, and recovers on the next success; liveness fails only
// for a sync that runs far too long.
func TestSyncHealth(t *testing.T) {
	boom := errors.New("netlink: commit: no buffer space available")
	type step struct {
		do        string // "ok", "fail", "begin" (a sync starts and hangs), "wait:<duration>"
		wantReady string // "" means ready; else a substring of the error
		wantLive  string
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"not ready before the first commit", []step{
			{do: "", wantReady: "no ruleset committed yet"},
			{do: "fail", wantReady: "no ruleset committed yet; last sync failed: netlink: commit"},
			{do: "ok"},
		}},
		{"two failures stay ready, the third does not, a success recovers", []step{
			{do: "ok"},
			{do: "fail"},
			{do: "fail"},
			{do: "wait:1h"},
			{do: "fail", wantReady: "3 syncs in a row failed, last success 1h0m0s ago"},
			{do: "fail", wantReady: "4 syncs in a row failed"},
			{do: "fail", wantReady: "no buffer space available"},
			{do: "ok"},
			{do: "fail"},
		}},
		{"a failing agent stays alive", []step{
			{do: "ok"}, {do: "fail"}, {do: "fail"}, {do: "fail", wantReady: "in a row"}, {do: "wait:24h", wantReady: "in a row"},
		}},
		{"a sync running past the bound fails liveness, its end recovers", []step{
			{do: "ok"},
			{do: "begin"},
			{do: "wait:2m"},
			{do: "wait:2m", wantLive: "a sync has been running for 4m0s (bound 3m0s): the sync loop is wedged"},
			{do: "ok"},
		}},
		{"no sync for a long time is no wedge (API server away, nothing changed)", []step{
			{do: "ok"}, {do: "wait:24h"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
			h := newSyncHealth(0, 0, clock.Now)
			running := false
			for i, s := range tt.steps {
				switch {
				case s.do == "ok" || s.do == "fail":
					if !running {
						h.begin()
					}
					running = false
					var err error
					if s.do == "fail" {
						err = boom
					}
					h.end(err)
				case s.do == "begin":
					h.begin()
					running = true
				case strings.HasPrefix(s.do, "wait:"):
					d, err := time.ParseDuration(strings.TrimPrefix(s.do, "wait:"))
					if err != nil {
						t.Fatal(err)
					}
					clock.Advance(d)
				}
				for _, c := range []struct {
					what string
					err  error
					want string
				}{{"ready", h.ready(), s.wantReady}, {"live", h.live(), s.wantLive}} {
					if c.want == "" && c.err != nil {
						t.Errorf("step %d (%s): %s: unexpected %v", i, s.do, c.what, c.err)
					}
					if c.want != "" && (c.err == nil || !strings.Contains(c.err.Error(), c.want)) {
						t.Errorf("step %d (%s): %s = %v, want it to contain %q", i, s.do, c.what, c.err, c.want)
					}
				}
			}
		})
	}
}

// TestHealthHandlerSaysWhy: the probe endpoints answer 503 with the reason
// of every failing check (controller-runtime's handler writes "reason
// withheld"), and 200 when all pass.
func TestHealthHandlerSaysWhy(t *testing.T) {
	failing := errors.New("3 syncs in a row failed")
	var readyErr atomic.Pointer[error]
	readyErr.Store(&failing)
	h := healthHandler(
		[]check{{"sync-loop", func() error { return nil }}},
		[]check{{"table-lock", func() error { return nil }}, {"synced", func() error { return *readyErr.Load() }}},
	)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		b, _ := io.ReadAll(rec.Body)
		return rec.Code, string(b)
	}
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "[-]synced failed: 3 syncs in a row failed") || !strings.Contains(body, "[+]table-lock ok") {
		t.Errorf("/readyz = %d %q", code, body)
	}
	if code, body := get("/healthz"); code != http.StatusOK || !strings.HasSuffix(body, "ok\n") {
		t.Errorf("/healthz = %d %q", code, body)
	}
	var none error
	readyErr.Store(&none)
	if code, body := get("/readyz"); code != http.StatusOK {
		t.Errorf("/readyz after recovery = %d %q", code, body)
	}
}

// TestProbesNeverWaitForASync holds the sync lock, as a long commit does,
// and asks both probes: they must answer at once.
func TestProbesNeverWaitForASync(t *testing.T) {
	s := &Syncer{health: newSyncHealth(0, 0, nil)}
	s.mu.Lock()
	defer s.mu.Unlock()
	answered := make(chan error, 2)
	go func() { answered <- s.ReadyCheck(nil) }()
	go func() { answered <- s.LiveCheck(nil) }()
	for i := 0; i < 2; i++ {
		select {
		case <-answered:
		case <-time.After(2 * time.Second):
			t.Fatal("a probe waited for the sync lock")
		}
	}
}

// TestTableGuard: while another agent holds the lock, the guard retries,
// readiness names the holder, and nothing waiting on it proceeds; once the
// lock is free it is taken, and released only when told.
func TestTableGuard(t *testing.T) {
	var attempts atomic.Int32
	released := make(chan struct{})
	try := func() (io.Closer, error) {
		if attempts.Add(1) <= 3 {
			return nil, &nft.LockedError{Table: "nftpol", PID: 4242}
		}
		return closerFunc(func() error { close(released); return nil }), nil
	}
	g := newTableGuard(try, 20*time.Millisecond, logr.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	release := make(chan struct{})
	done := make(chan struct{})
	go func() { defer close(done); g.run(ctx, release) }()

	if err := g.ready(); err == nil || !strings.Contains(err.Error(), "waiting for the table lock") {
		t.Fatalf("ready before the lock = %v", err)
	}
	waitCtx, waitCancel := context.WithTimeout(ctx, 10*time.Millisecond)
	if g.wait(waitCtx) {
		t.Fatal("wait returned before the lock was taken")
	}
	waitCancel()
	deadline := time.Now().Add(5 * time.Second)
	for attempts.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if err := g.ready(); err == nil || !strings.Contains(err.Error(), "waiting for the table lock: another nftpol agent holds table inet nftpol in this network namespace (pid 4242)") {
		t.Fatalf("ready while another agent holds the lock = %v", err)
	}

	heldCtx, heldCancel := context.WithTimeout(ctx, 5*time.Second)
	defer heldCancel()
	if !g.wait(heldCtx) {
		t.Fatal("the lock was not taken once free")
	}
	if err := g.ready(); err != nil {
		t.Fatalf("ready once held = %v", err)
	}
	select {
	case <-released:
		t.Fatal("lock released before the agent stopped")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("lock not released")
	}
	<-done
}

type closerFunc func() error

func (f closerFunc) Close() error { return f() }

// flakyEnforcer wraps the real Enforcer: its commits fail while fail is
// set and hang while hang is set (until it is cleared).
type flakyEnforcer struct {
	Enforcer
	fail atomic.Bool
	hang atomic.Bool
}

func (f *flakyEnforcer) Commit(rs *nft.Ruleset) (nft.CommitStats, error) {
	for i := 0; f.hang.Load() && i < 3000; i++ {
		time.Sleep(10 * time.Millisecond) // bounded: 30 s at most
	}
	if f.fail.Load() {
		return nft.CommitStats{}, errors.New("injected: commit refused")
	}
	return f.Enforcer.Commit(rs)
}

// TestHealthOfARealAgent runs the manager against envtest and a real table
// with commits that fail, then hang: readiness turns not ready after three
// failures in a row and says why on /readyz, liveness stays up; the next
// commit that succeeds makes it ready again; a hanging commit fails
// liveness past the bound while both probes still answer at once.
func TestHealthOfARealAgent(t *testing.T) {
	var flaky *flakyEnforcer
	a := startAgentWith(t, "node-a", func(o *Options) {
		flaky = &flakyEnforcer{Enforcer: o.Enforcer}
		o.Enforcer = flaky
		o.SyncStuckAfter = time.Second
	})
	probe := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		start := time.Now()
		a.syncer.healthHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if d := time.Since(start); d > time.Second {
			t.Errorf("%s took %s: a probe waited", path, d)
		}
		return rec.Code, rec.Body.String()
	}
	eventually(t, "ready after the first commit", func() error {
		if code, body := probe("/readyz"); code != http.StatusOK {
			return errors.New(body)
		}
		return nil
	})

	flaky.fail.Store(true)
	a.createNamespace(t, "health-1", nil) // a change, so a sync runs now
	eventually(t, "not ready after failing commits", func() error {
		code, body := probe("/readyz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "syncs in a row failed") || !strings.Contains(body, "injected: commit refused") {
			return errors.New(body)
		}
		return nil
	})
	if code, body := probe("/healthz"); code != http.StatusOK {
		t.Fatalf("liveness of an agent whose commits fail: %d %s", code, body)
	}
	if got := gaugeValue(t, a.metrics, "nftpol_sync_consecutive_failures"); got < DefaultFailuresUntilUnready {
		t.Errorf("nftpol_sync_consecutive_failures = %v, want >= %d", got, DefaultFailuresUntilUnready)
	}

	flaky.fail.Store(false)
	a.createNamespace(t, "health-2", nil)
	eventually(t, "ready again after a commit succeeds", func() error {
		if code, body := probe("/readyz"); code != http.StatusOK {
			return errors.New(body)
		}
		return nil
	})
	if got := gaugeValue(t, a.metrics, "nftpol_sync_consecutive_failures"); got != 0 {
		t.Errorf("nftpol_sync_consecutive_failures after a success = %v", got)
	}

	flaky.hang.Store(true)
	t.Cleanup(func() { flaky.hang.Store(false) }) // let the manager stop
	a.createNamespace(t, "health-3", nil)
	eventually(t, "liveness fails for a wedged sync", func() error {
		code, body := probe("/healthz")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "the sync loop is wedged") {
			return errors.New(body)
		}
		return nil
	})
	flaky.hang.Store(false)
	eventually(t, "alive again once the sync ends", func() error {
		if code, body := probe("/healthz"); code != http.StatusOK {
			return errors.New(body)
		}
		return nil
	})
}

func gaugeValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no gauge %s", name)
	return 0
}
