package test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"testing"
	"time"

	"github.com/nftpol/nftpol/test/testbed"
)

// startVariant is one way of starting the agent that the scale benchmark
// restarts it with, to tell where its start goes.
type startVariant struct {
	name string // in the metric names
	args []string
	env  [2]string // one environment variable for the agent, if any
}

// startVariants: the shipped agent; without gzip (the API server
// compresses every initial list for every agent, and the agent inflates
// it); with paginated lists instead of the streaming watch-list client-go
// uses by default; and with the garbage collector running a quarter as
// often (GOGC=400): the heap grows from nothing to its warm size during
// the initial lists, one collection per doubling.
var startVariants = []startVariant{
	{name: "default"},
	{name: "nogzip", args: []string{"--api-compression=false"}},
	{name: "pagedlist", env: [2]string{"KUBE_FEATURE_WatchListClient", "false"}},
	{name: "gogc400", env: [2]string{"GOGC", "400"}},
}

// startRounds is how many times each variant is started, in interleaved
// rounds.
const startRounds = 3

// firstCommitLog is the agent's log line of its first commit.
var firstCommitLog = regexp.MustCompile(`"first table committed".* sinceStart="([^"]+)" initialLists="([^"]+)" compute="([^"]+)" commit="([^"]+)"`)

// startSample is one start of the agent.
type startSample struct {
	ready                    time.Duration // process start to /readyz
	lists, compute, commit   time.Duration // from the agent's log
	agentCPU, apiCPU, rssMiB float64       // CPU seconds to ready + 3 s, RSS then
	heapMiB                  float64
}

// measureRestarts stops the benchmark's agent and starts it again,
// startRounds times per variant, against the same cluster and table: a
// restart (an upgrade, a crash) replaces the table the last agent left.
// It reports the median of each variant's start to ready, its parts as
// the agent logs them, the CPU seconds the agent and the API server spent
// on it, and the agent's RSS 3 s after ready.
func measureRestarts(b *testing.B, cp *testbed.ControlPlane, node *testbed.Node, running *testbed.Agent, args []string) {
	b.Helper()
	if err := running.Kill(); err != nil {
		b.Fatal(err)
	}
	apiPID, err := apiServerPID(cp.Config.Host)
	if err != nil {
		b.Fatal(err)
	}
	samples := make(map[string][]startSample)
	for _, order := range interleaved(startVariants, startRounds) {
		for _, v := range order {
			samples[v.name] = append(samples[v.name], startOnce(b, cp, node, apiPID, v, args))
		}
	}
	// One line: a benchmark's log keeps its first ten.
	line := "restarts:"
	for _, v := range startVariants {
		ss := samples[v.name]
		med := func(f func(startSample) float64) float64 {
			xs := make([]float64, len(ss))
			for i, s := range ss {
				xs[i] = f(s)
			}
			return median(xs)
		}
		b.ReportMetric(med(func(s startSample) float64 { return s.ready.Seconds() }), "restart-ready-s-"+v.name)
		b.ReportMetric(med(func(s startSample) float64 { return s.lists.Seconds() }), "restart-lists-s-"+v.name)
		b.ReportMetric(med(func(s startSample) float64 { return ms(s.compute) }), "restart-compute-ms-"+v.name)
		b.ReportMetric(med(func(s startSample) float64 { return ms(s.commit) }), "restart-commit-ms-"+v.name)
		b.ReportMetric(med(func(s startSample) float64 { return s.agentCPU }), "restart-agent-cpu-s-"+v.name)
		b.ReportMetric(med(func(s startSample) float64 { return s.apiCPU }), "restart-apiserver-cpu-s-"+v.name)
		b.ReportMetric(med(func(s startSample) float64 { return s.rssMiB }), "restart-RSS-MiB-"+v.name)
		line += " " + v.name
		for _, s := range ss {
			line += fmt.Sprintf(" [ready %s: lists %s, compute %s, commit %s; CPU agent %.2f s, API server %.2f s; RSS %.0f MiB, heap %.0f MiB]",
				s.ready.Round(time.Millisecond), s.lists, s.compute, s.commit, s.agentCPU, s.apiCPU, s.rssMiB, s.heapMiB)
		}
		line += ";"
	}
	b.Log(line)
}

func startOnce(b *testing.B, cp *testbed.ControlPlane, node *testbed.Node, apiPID int, v startVariant, args []string) startSample {
	b.Helper()
	if v.env[0] != "" {
		old, had := os.LookupEnv(v.env[0])
		os.Setenv(v.env[0], v.env[1])
		defer func() {
			if had {
				os.Setenv(v.env[0], old)
			} else {
				os.Unsetenv(v.env[0])
			}
		}()
	}
	apiBefore, err := processCPU(apiPID)
	if err != nil {
		b.Fatal(err)
	}
	t0 := time.Now()
	a := testbed.StartAgentUnreadyT(b, cp, node, append(slices.Clone(args), v.args...)...)
	if err := a.WaitReady(context.Background(), 60*time.Second); err != nil {
		b.Fatal(err)
	}
	s := startSample{ready: time.Since(t0)}
	time.Sleep(3 * time.Second)
	m := scrape(b, "http://"+a.MetricsAddr+"/metrics")
	apiAfter, err := processCPU(apiPID)
	if err != nil {
		b.Fatal(err)
	}
	rss, err := a.RSSBytes()
	if err != nil {
		b.Fatal(err)
	}
	s.agentCPU, s.apiCPU = m["process_cpu_seconds_total"], apiAfter-apiBefore
	s.rssMiB, s.heapMiB = float64(rss)/(1<<20), m["go_memstats_heap_inuse_bytes"]/(1<<20)
	match := firstCommitLog.FindStringSubmatch(a.Log())
	if match == nil {
		b.Fatalf("no first-commit line in the agent's log:\n%s", a.Log())
	}
	parse := func(s string) time.Duration {
		d, err := time.ParseDuration(s)
		if err != nil {
			b.Fatalf("first-commit line: %q: %v", s, err)
		}
		return d
	}
	s.lists, s.compute, s.commit = parse(match[2]), parse(match[3]), parse(match[4])
	if err := a.Kill(); err != nil {
		b.Fatal(err)
	}
	return s
}
