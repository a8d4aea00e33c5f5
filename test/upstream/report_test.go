package upstream

import (
	"os"
	"strings"
	"testing"
	"time"
)

// testdata/report-no-agent.json is ginkgo's JSON report of a real run
// (`run -no-agent` on four specs), cut to a few specs and to the fields
// ParseReport reads: three enforcement specs failed without the agent,
// the endPort API spec passed, and one unfocused and one SCTP spec were
// skipped.
func TestParseReport(t *testing.T) {
	data, err := os.ReadFile("testdata/report-no-agent.json")
	if err != nil {
		t.Fatal(err)
	}
	res, err := ParseReport(data)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := res.Duration.Round(time.Millisecond), 99511*time.Millisecond; got != want {
		t.Errorf("duration %s, want %s", got, want)
	}
	tests := []struct {
		name, state, reason string
	}{
		{"[sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-all' policy [Feature:NetworkPolicy]", "skipped", "not selected by the focus"},
		{"[sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]", "failed", "Had 6 wrong results in reachability matrix (test_helper.go:129)"},
		{"[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]", "skipped", Skips[0].Reason},
		{"[sig-network] Netpol [LinuxOnly] NetworkPolicy between server and client using UDP should enforce policy based on Ports [Feature:NetworkPolicy]", "failed", "Had 2 wrong results in reachability matrix (test_helper.go:129)"},
		{"[sig-network] Netpol API should support creating NetworkPolicy API with endport field", "passed", ""},
		{"[sig-network] Netpol NetworkPolicy between server and client should allow ingress access on one named port [Feature:NetworkPolicy]", "failed", "Had 4 wrong results in reachability matrix (test_helper.go:129)"},
	}
	// The suite's setup and report nodes passed: they are no specs.
	if len(res.Specs) != len(tests) {
		t.Fatalf("%d specs, want %d: %+v", len(res.Specs), len(tests), res.Specs)
	}
	for i, tt := range tests {
		s := res.Specs[i]
		if s.Name != tt.name || s.State != tt.state || s.Reason != tt.reason {
			t.Errorf("spec %d:\n got %q %s %q\nwant %q %s %q", i, s.Name, s.State, s.Reason, tt.name, tt.state, tt.reason)
		}
	}
	if res.Failed() != 3 {
		t.Errorf("Failed() = %d, want 3", res.Failed())
	}
	var summary strings.Builder
	res.Procs = 2
	res.Summary(&summary, "upstream Netpol suite")
	for _, want := range []string{
		"1 passed, 3 failed, 2 skipped of 6 specs in 1m40s (2 processes)",
		"skipped 1: " + Skips[0].Reason,
		"failed: [sig-network] Netpol NetworkPolicy between server and client should allow ingress access on one named port",
	} {
		if !strings.Contains(summary.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, summary.String())
		}
	}
}

// A suite whose setup failed ran no spec: the failure must show as one.
func TestParseReportSetupFailure(t *testing.T) {
	report := `[{"RunTime": 1000000000, "SpecReports": [
		{"LeafNodeType": "SynchronizedBeforeSuite", "State": "failed",
		 "Failure": {"Message": "reading the kubernetes Service: connection refused\nmore", "Location": {"FileName": "/x/netpol_e2e_test.go", "LineNumber": 56}}},
		{"ContainerHierarchyTexts": ["[sig-network] Netpol"], "LeafNodeType": "It", "LeafNodeText": "should x", "State": "skipped"}]}]`
	res, err := ParseReport([]byte(report))
	if err != nil {
		t.Fatal(err)
	}
	if res.Failed() != 1 || res.Specs[0].Reason != "reading the kubernetes Service: connection refused (netpol_e2e_test.go:56)" {
		t.Errorf("got %+v", res.Specs)
	}
	if _, err := ParseReport([]byte("not json")); err == nil {
		t.Error("no error for a report that is not JSON")
	}
}
