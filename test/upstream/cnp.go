package upstream

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// CNPSuite is a directory build-cnp.sh filled: the ClusterNetworkPolicy
// conformance suite of sigs.k8s.io/network-policy-api (its conformance/
// test package, unmodified) as cnp-conformance.test, and the module's
// experimental CRD (a superset of the standard one).
type CNPSuite string

// CNPSuiteFromEnv is the suite the Makefile builds ($NFTPOL_CNP_SUITE).
func CNPSuiteFromEnv() CNPSuite { return CNPSuite(os.Getenv("NFTPOL_CNP_SUITE")) }

// CNPSkips are the tests every CNP run leaves out (go test -skip).
var CNPSkips = []Skip{{
	Pattern: `SCTP`,
	Reason:  "needs SCTP, which this kernel lacks (no /proc/net/sctp)",
}}

// CNPFeatures are the suite's features nftpol claims: the standard one and
// the experimental ones, which together make the ClusterNetworkPolicy
// conformance profile.
var CNPFeatures = []string{"ClusterNetworkPolicy", "ClusterNetworkPolicyNamedPorts", "ClusterNetworkPolicyEgressNodePeers"}

// Missing returns why the suite cannot run, or "".
func (s CNPSuite) Missing() string {
	return missing(string(s), "NFTPOL_CNP_SUITE", "make upstream-cnp", "make conformance-upstream sets it",
		"cnp-conformance.test", "clusternetworkpolicies.yaml")
}

// CNPOptions shape one run of the CNP conformance suite.
type CNPOptions struct {
	// Kubeconfig is the cluster's admin kubeconfig; Kubectl runs kubectl.
	Kubeconfig, Kubectl string
	// Dir receives the suite's output and its conformance report.
	Dir string
	// Version is nftpol's version, for the suite's report.
	Version string
	// Timeout bounds the run.
	Timeout time.Duration
	// Output receives the suite's output as it runs.
	Output io.Writer
}

// RunCNP installs the ClusterNetworkPolicy CRD and runs the CNP
// conformance suite with the ClusterNetworkPolicy profile (standard and
// experimental features), SCTP tests skipped. The Result has one Spec per
// conformance test (the suite's subtests).
func RunCNP(ctx context.Context, suite CNPSuite, opts CNPOptions) (*Result, error) {
	if reason := suite.Missing(); reason != "" {
		return nil, errors.New(reason)
	}
	if opts.Timeout == 0 {
		opts.Timeout = time.Hour
	}
	if opts.Output == nil {
		opts.Output = io.Discard
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the report directory: %w", err)
	}
	crd := exec.CommandContext(ctx, opts.Kubectl, "--kubeconfig", opts.Kubeconfig,
		"apply", "--server-side", "-f", filepath.Join(string(suite), "clusternetworkpolicies.yaml"))
	if out, err := crd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("installing the ClusterNetworkPolicy CRD: %w: %s", err, out)
	}
	wait := exec.CommandContext(ctx, opts.Kubectl, "--kubeconfig", opts.Kubeconfig,
		"wait", "--for", "condition=Established", "--timeout", "60s", "crd/clusternetworkpolicies.policy.networking.k8s.io")
	if out, err := wait.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("waiting for the ClusterNetworkPolicy CRD: %w: %s", err, out)
	}

	var skips []string
	for _, s := range CNPSkips {
		skips = append(skips, s.Pattern)
	}
	args := []string{
		// The profile run, as the module's own Makefile runs it
		// (conformance-profiles).
		"-test.run", "^TestConformanceProfiles$",
		"-test.v", "-test.timeout", opts.Timeout.String(),
		// -skip applies each slash-separated part to one level of
		// tests: the conformance tests are subtests of
		// TestConformanceProfiles.
		"-test.skip", "/" + strings.Join(skips, "|"),
		"-conformance-profiles", "ClusterNetworkPolicy",
		"-supported-features", strings.Join(CNPFeatures, ","),
		"-organization", "nftpol", "-project", "nftpol", "-url", "https://github.com/nftpol/nftpol",
		"-version", opts.Version, "-contact", "nftpol maintainers",
		"-additional-info", "make conformance-upstream UPSTREAM_ARGS=-cnp",
		"-report-output", filepath.Join(opts.Dir, "cnp-report.yaml"),
	}
	out, err := os.Create(filepath.Join(opts.Dir, "cnp-conformance.log"))
	if err != nil {
		return nil, err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, filepath.Join(string(suite), "cnp-conformance.test"), args...)
	cmd.Dir = opts.Dir
	cmd.Env = append(os.Environ(), "KUBECONFIG="+opts.Kubeconfig)
	cmd.Stdout = io.MultiWriter(out, opts.Output)
	cmd.Stderr = cmd.Stdout
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = time.Minute
	began := time.Now()
	runErr := cmd.Run()
	data, err := os.ReadFile(out.Name())
	if err != nil {
		return nil, err
	}
	res := ParseGoTestOutput(string(data))
	res.Duration = time.Since(began)
	if len(res.Specs) == 0 {
		return nil, fmt.Errorf("the CNP suite reported no test (%v); its output is in %s", runErr, out.Name())
	}
	return res, nil
}

var (
	goTestRun     = regexp.MustCompile(`^=== (?:RUN|CONT|NAME)\s+(\S+)`)
	goTestResult  = regexp.MustCompile(`^\s*--- (PASS|FAIL|SKIP): (\S+) \(([0-9.]+)s\)`)
	goTestLog     = regexp.MustCompile(`^\s+[\w.-]+\.go:\d+: (.+)$`)
	testifyReason = regexp.MustCompile(`^\s+(Messages|Error):\s+(.+)$`)
)

// ParseGoTestOutput reads `go test -v` output: one Spec per test that has
// no subtests (the leaves). A test logs before its result line, so each
// log line is kept for the test that last started; a skip's reason is its
// last log line, a failure's is testify's message, else its error, else
// its last log line.
func ParseGoTestOutput(out string) *Result {
	res := &Result{Procs: 1}
	parents := map[string]bool{}
	lastLog := map[string]string{}
	testify := map[string]map[string]string{}
	current := ""
	var specs []Spec
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := goTestRun.FindStringSubmatch(line); m != nil {
			current = m[1]
			continue
		}
		if m := goTestResult.FindStringSubmatch(line); m != nil {
			secs, _ := strconv.ParseFloat(m[3], 64)
			s := Spec{Name: m[2], Duration: time.Duration(secs * float64(time.Second))}
			switch m[1] {
			case "PASS":
				s.State = "passed"
			case "SKIP":
				s.State, s.Reason = "skipped", lastLog[s.Name]
			default:
				s.State = "failed"
				s.Reason = cmp.Or(testify[s.Name]["Messages"], testify[s.Name]["Error"], lastLog[s.Name])
			}
			specs = append(specs, s)
			if i := strings.LastIndex(s.Name, "/"); i > 0 {
				parents[s.Name[:i]] = true
			}
			continue
		}
		if current == "" {
			continue
		}
		if m := testifyReason.FindStringSubmatch(line); m != nil {
			if testify[current] == nil {
				testify[current] = map[string]string{}
			}
			if testify[current][m[1]] == "" {
				testify[current][m[1]] = strings.TrimSpace(m[2])
			}
		} else if m := goTestLog.FindStringSubmatch(line); m != nil && strings.TrimSpace(m[1]) != "" {
			lastLog[current] = strings.TrimSpace(m[1])
		}
	}
	for _, s := range specs {
		if !parents[s.Name] {
			res.Specs = append(res.Specs, s)
		}
	}
	return res
}
