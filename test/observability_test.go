package test

import (
	"bufio"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/test/testbed"
)

// scrape returns the samples of a Prometheus text page by series text.
func scrape(t testing.TB, url string) map[string]float64 {
	t.Helper()
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// TestMetricsCountAllowedAndDenied scrapes a running agent over HTTP after
// real allowed and denied connections: the deciding policy's counters
// follow the probes, and the sync metrics are there.
func TestMetricsCountAllowedAndDenied(t *testing.T) {
	m := startModel(t, e2ePrefix+"obs", "--deny-action", "reject")
	// Each agent says once where its start went (README, "Health,
	// readiness and the table lock").
	for node, a := range m.agents {
		if n := len(firstCommitLog.FindAllString(a.Log(), -1)); n != 1 {
			t.Errorf("the agent of %s logged its first commit %d times, want once:\n%s", node, n, a.Log())
		}
	}
	server := m.bed.Pod("x/a")
	metricsURL := "http://" + m.agents[server.Node].MetricsAddr + "/metrics"

	m.applyPolicy(t, withIngress(policy("x", "allow-y-b", sel("pod", "a"), nil), from(nsPodPeer(selPtr("ns", "y"), selPtr("pod", "b")))))
	want := step{expect: func(e *expectation) { e.isolateIngress("x/a", "y/b") }}
	if _, failures := m.converge(want); len(failures) > 0 {
		t.Fatalf("policy not in force:\n%s", strings.Join(failures, "\n"))
	}
	allowedSeries := `nftpol_policy_packets_total{direction="ingress",policy="x/allow-y-b",verdict="allowed"}`
	deniedSeries := `nftpol_policy_packets_total{direction="ingress",policy="x/allow-y-b",verdict="denied"}`
	before := scrape(t, metricsURL)
	allowedFrom, deniedFrom := m.bed.Pod("y/b"), m.bed.Pod("z/c")
	const n = 5
	for i := 0; i < n; i++ {
		if err := testbed.Probe(allowedFrom, server.IPv4, testbed.TCP, 80, server.Key(), time.Second); err != nil {
			t.Fatalf("allowed probe failed: %v", err)
		}
		if err := testbed.Probe(deniedFrom, server.IPv4, testbed.TCP, 80, server.Key(), time.Second); err == nil {
			t.Fatal("denied probe got through")
		}
	}
	after := scrape(t, metricsURL)
	// Each allowed connection's first packet (the SYN) passes the policy
	// rule; each denied SYN hits the isolation chain's counter once.
	if got := after[allowedSeries] - before[allowedSeries]; got != n {
		t.Errorf("%s grew by %v, want %d", allowedSeries, got, n)
	}
	if got := after[deniedSeries] - before[deniedSeries]; got != n {
		t.Errorf("%s grew by %v, want %d", deniedSeries, got, n)
	}
	for _, series := range []string{"nftpol_syncs_total", "nftpol_local_pods", "nftpol_isolated_pods", "nftpol_policies", "nftpol_rules", "nftpol_last_sync_timestamp_seconds"} {
		if after[series] <= 0 {
			t.Errorf("%s = %v, want > 0", series, after[series])
		}
	}
	if _, ok := after["nftpol_sync_errors_total"]; !ok {
		t.Error("nftpol_sync_errors_total is missing")
	}
	t.Logf("allowed %v, denied %v, syncs %v", after[allowedSeries], after[deniedSeries], after["nftpol_syncs_total"])
}

// deniedLines returns the agent's denied-flow log lines after offset.
func deniedLines(log string, offset int) []string {
	var out []string
	for _, line := range strings.Split(log[offset:], "\n") {
		if strings.Contains(line, `"denied"`) {
			out = append(out, line)
		}
	}
	return out
}

// TestDeniedFlowIsLoggedOnce sends one denied connection and one allowed
// one: the agent logs exactly one line, naming both pods, the direction,
// protocol, port and the isolating policy; a retry of the same flow within
// the flow memory adds nothing.
func TestDeniedFlowIsLoggedOnce(t *testing.T) {
	m := startModel(t, e2ePrefix+"log", "--deny-action", "reject", "--log-denied")
	m.applyPolicy(t, withIngress(policy("x", "allow-y-b", sel("pod", "a"), nil), from(nsPodPeer(selPtr("ns", "y"), selPtr("pod", "b")))))
	want := step{expect: func(e *expectation) { e.isolateIngress("x/a", "y/b") }}
	if _, failures := m.converge(want); len(failures) > 0 {
		t.Fatalf("policy not in force:\n%s", strings.Join(failures, "\n"))
	}
	server, denied, allowed := m.bed.Pod("x/a"), m.bed.Pod("z/c"), m.bed.Pod("y/b")
	agent := m.agents[server.Node]
	time.Sleep(300 * time.Millisecond) // let the log of the convergence probes settle
	mark := len(agent.Log())

	// Port 82 has no server: the flow is new to the log memory, and the
	// policy rejects it before it could reach the pod.
	if err := testbed.Probe(denied, server.IPv4, testbed.TCP, 82, "", time.Second); err == nil {
		t.Fatal("the denied probe got through")
	}
	if err := testbed.Probe(allowed, server.IPv4, testbed.TCP, 80, server.Key(), time.Second); err != nil {
		t.Fatalf("the allowed probe failed: %v", err)
	}
	if err := testbed.Probe(denied, server.IPv4, testbed.TCP, 82, "", time.Second); err == nil {
		t.Fatal("the repeated denied probe got through")
	}
	var lines []string
	for attempt := 0; attempt < 30; attempt++ {
		if lines = deniedLines(agent.Log(), mark); len(lines) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	lines = deniedLines(agent.Log(), mark)
	if len(lines) != 1 {
		t.Fatalf("want exactly one denied line, got %d:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	for _, want := range []string{`direction="ingress"`, `src="z/c"`, `dst="x/a"`, `protocol="TCP"`, `port=82`, `isolatedBy=["x/allow-y-b"]`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("the denied line lacks %s:\n%s", want, lines[0])
		}
	}
	t.Logf("%s", lines[0])
}
