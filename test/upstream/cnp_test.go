package upstream

import (
	"os"
	"testing"
	"time"
)

func TestParseGoTestOutput(t *testing.T) {
	// testdata/cnp-setup-failure.txt is the output of a real run on this
	// kernel (its hundreds of "not rolled out yet" lines cut): the base
	// pods never got ready, so TestConformance failed in its setup.
	realRun, err := os.ReadFile("testdata/cnp-setup-failure.txt")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, out string
		want      []Spec
	}{{
		name: "a real run that failed in its setup",
		out:  string(realRun),
		want: []Spec{
			{Name: "TestConformanceProfiles", State: "failed", Duration: 10 * time.Millisecond,
				Reason: "Error parsing implementation's details: implementation's CI integration used to generate the report cannot be empty"},
			{Name: "TestConformance", State: "failed", Duration: 300530 * time.Millisecond,
				Reason: "error waiting for network-policy-conformance-gryffindor, network-policy-conformance-slytherin, network-policy-conformance-hufflepuff, network-policy-conformance-ravenclaw, network-policy-conformance-forbidden-forrest namespaces to be ready"},
		},
	}, {
		name: "subtests: leaves only, skip and failure reasons",
		out: `=== RUN   TestConformanceProfiles
    conformance_profile_test.go:104: Running conformance profile tests
=== RUN   TestConformanceProfiles/CNPAdminTierIngressTCP
=== RUN   TestConformanceProfiles/CNPAdminTierIngressTCP/Should_support_a_pass
    helper.go:98: probing
=== RUN   TestConformanceProfiles/CNPAdminTierEgressNodePeers
    suite.go:210: Skipping CNPAdminTierEgressNodePeers: suite does not support ClusterNetworkPolicyEgressNodePeers
=== RUN   TestConformanceProfiles/CNPBaselineTierIngressUDP
    helper.go:106: FAILED Command was /agnhost connect 10.244.1.2:53 --timeout=1s --protocol=udp
    helper.go:72: 
        	Error Trace:	helper.go:72
        	Error:      	Should be true
        	Test:       	TestConformanceProfiles/CNPBaselineTierIngressUDP
--- FAIL: TestConformanceProfiles (40.10s)
    --- PASS: TestConformanceProfiles/CNPAdminTierIngressTCP (20.00s)
        --- PASS: TestConformanceProfiles/CNPAdminTierIngressTCP/Should_support_a_pass (19.50s)
    --- SKIP: TestConformanceProfiles/CNPAdminTierEgressNodePeers (0.00s)
    --- FAIL: TestConformanceProfiles/CNPBaselineTierIngressUDP (20.00s)
FAIL
`,
		want: []Spec{
			{Name: "TestConformanceProfiles/CNPAdminTierIngressTCP/Should_support_a_pass", State: "passed", Duration: 19500 * time.Millisecond},
			{Name: "TestConformanceProfiles/CNPAdminTierEgressNodePeers", State: "skipped",
				Reason: "Skipping CNPAdminTierEgressNodePeers: suite does not support ClusterNetworkPolicyEgressNodePeers"},
			{Name: "TestConformanceProfiles/CNPBaselineTierIngressUDP", State: "failed", Duration: 20 * time.Second, Reason: "Should be true"},
		},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := ParseGoTestOutput(tt.out)
			if len(res.Specs) != len(tt.want) {
				t.Fatalf("got %d specs, want %d: %+v", len(res.Specs), len(tt.want), res.Specs)
			}
			for i, want := range tt.want {
				if res.Specs[i] != want {
					t.Errorf("spec %d:\n got %+v\nwant %+v", i, res.Specs[i], want)
				}
			}
		})
	}
}
