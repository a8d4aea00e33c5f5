package test

import (
	"bufio"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nftpol/nftpol/test/testbed"
)

// scrape returns the samples of a Prometheus text page by series text.
func scrape(t *testing.T, url string) map[string]float64 {
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
	m := startModel(t, "nftpol-obs", "--deny-action", "reject")
	server := m.bed.Pod("x/a")
	node := m.bed.Node(server.Node)
	// Replace the node's agent by one that serves metrics.
	if err := m.agents[node.Name].Kill(); err != nil {
		t.Fatal(err)
	}
	port, err := testbed.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	metricsURL := fmt.Sprintf("http://127.0.0.1:%d/metrics", port)
	testbed.StartAgentT(t, m.cp, node, "--deny-action", "reject", "--metrics-bind-address", fmt.Sprintf("127.0.0.1:%d", port))

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
	for _, series := range []string{"nftpol_syncs_total", "nftpol_isolated_pods", "nftpol_policies", "nftpol_rules", "nftpol_last_sync_timestamp_seconds"} {
		if after[series] <= 0 {
			t.Errorf("%s = %v, want > 0", series, after[series])
		}
	}
	if _, ok := after["nftpol_sync_errors_total"]; !ok {
		t.Error("nftpol_sync_errors_total is missing")
	}
	t.Logf("allowed %v, denied %v, syncs %v", after[allowedSeries], after[deniedSeries], after["nftpol_syncs_total"])
}
