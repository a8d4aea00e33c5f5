package controllers

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/nftpol/nftpol/selectors"
)

// flowsNetnsPrefix names the network namespaces of the sweep tests and
// benchmark; it does not start with netnsPrefix, whose leftover cleanup
// would take them.
const flowsNetnsPrefix = "nftpol-cbflows"

// The sweep tests' conntrack table: UDP entries to 100 local pods from
// 10.2.0.0/16, one in ten from outside the first 500 peers (benchFlow).
const sweepEntries, sweepPods, sweepPeers, sweepDeniedEvery = 2000, 100, 500, 10

// sweepTable makes a namespace holding the sweep tests' conntrack table.
func sweepTable(t *testing.T) string {
	t.Helper()
	netns, create := flowTable(t, sweepEntries, sweepPods, sweepPeers, sweepDeniedEvery)
	create(func(int) bool { return true })
	return netns
}

// deniedBy counts the entries of the sweep table that a model allowing
// the first allowed peers denies and one allowing the first before peers
// does not.
func deniedBy(allowed, before int) int {
	n := 0
	for i := range sweepEntries {
		src := i % sweepPeers
		if i%sweepDeniedEvery == 0 {
			src = sweepPeers + i%1000
		}
		if src >= allowed && src < before {
			n++
		}
	}
	return n
}

// TestSweepNeverHoldsUpTheCaller: while a sweep is busy (its report is
// held), Sweep returns at once for three newer commits; once released,
// exactly one more sweep runs, with the newest model: it cuts what that
// model denies and the first did not. The sync loop calls Sweep after
// each commit, so a long sweep never delays the next sync.
func TestSweepNeverHoldsUpTheCaller(t *testing.T) {
	netns := sweepTable(t)
	cutter := &FlowCutter{NetNSPath: netns, noPickups: true}
	defer cutter.Wait()

	entered, release := make(chan struct{}), make(chan struct{})
	reports := make(chan FlowCutStats, 10)
	var calls atomic.Int32
	report := func(st FlowCutStats, err error) {
		if err != nil {
			t.Errorf("sweep %d: %v", calls.Load()+1, err)
		}
		if calls.Add(1) == 1 {
			close(entered)
			<-release
		}
		reports <- st
	}
	// Like the sync loop, the callers never wait for the sweeps they
	// start: each Sweep must return while the first sweep is held.
	returned := make(chan struct{})
	go func() {
		defer close(returned)
		cutter.Sweep(benchModel(sweepPods, sweepPeers), report)
	}()
	select {
	case <-entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the first sweep did not end within 30 s")
	}
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("Sweep waited for the sweep it started")
	}
	submitted := make(chan struct{})
	go func() {
		defer close(submitted)
		for _, peers := range []int{400, 300, 250} {
			cutter.Sweep(benchModel(sweepPods, peers), report)
		}
	}()
	select {
	case <-submitted:
	case <-time.After(10 * time.Second):
		close(release)
		t.Fatal("Sweep waited for the running sweep")
	}
	running, swept := sweepMetrics(t, cutter)
	if running() != 1 || swept() != 0 {
		t.Errorf("while the first sweep runs: nftpol_flow_sweep_running %v, nftpol_flow_sweeps_total %v; want 1 and 0", running(), swept())
	}
	close(release)

	first := deniedBy(sweepPeers, sweepPeers+1000)
	for i, want := range []struct{ cut, entries int }{{first, sweepEntries}, {deniedBy(250, sweepPeers), sweepEntries - first}} {
		select {
		case st := <-reports:
			if st.Cut != want.cut || st.Entries != want.entries {
				t.Errorf("sweep %d: cut %d of %d entries, want %d of %d", i+1, st.Cut, st.Entries, want.cut, want.entries)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("sweep %d did not report within 30 s", i+1)
		}
	}
	cutter.Wait()
	if n := calls.Load(); n != 2 {
		t.Errorf("%d sweeps ran for four commits, three of them during the first sweep; want 2", n)
	}
	if running() != 0 || swept() != 2 {
		t.Errorf("after the sweeps: nftpol_flow_sweep_running %v, nftpol_flow_sweeps_total %v; want 0 and 2", running(), swept())
	}
}

// sweepMetrics reads the cutter's two metrics (Collectors).
func sweepMetrics(t *testing.T, c *FlowCutter) (running, swept func() float64) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	for _, col := range c.Collectors() {
		reg.MustRegister(col)
	}
	read := func(name string) func() float64 {
		return func() float64 {
			families, err := reg.Gather()
			if err != nil {
				t.Fatalf("gathering the flow cut metrics: %v", err)
			}
			for _, f := range families {
				if f.GetName() != name || len(f.GetMetric()) != 1 {
					continue
				}
				m := f.GetMetric()[0]
				return m.GetGauge().GetValue() + m.GetCounter().GetValue()
			}
			t.Fatalf("no metric %s", name)
			return 0
		}
	}
	return read("nftpol_flow_sweep_running"), read("nftpol_flow_sweeps_total")
}

// TestSweepTakesUpANewerModelMidway: a sweep whose model is superseded
// after it read the table decides every entry it had not reached with the
// newer model: it cuts what the newer model denies, not what the older
// one did.
func TestSweepTakesUpANewerModelMidway(t *testing.T) {
	netns := sweepTable(t)
	cutter := &FlowCutter{NetNSPath: netns, noPickups: true}
	older, newer := benchModel(sweepPods, sweepPeers), benchModel(sweepPods, 250)
	asked := 0
	st, err := cutter.sweep(func() *selectors.Model {
		// The first answer starts the sweep; a newer commit comes
		// before the first entry is decided.
		asked++
		if asked == 1 {
			return older
		}
		return newer
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := deniedBy(250, sweepPeers+1000); st.Cut != want || st.Superseded != 1 {
		t.Errorf("cut %d entries, superseded %d times; want %d (the newer model's) and 1", st.Cut, st.Superseded, want)
	}
}
