package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Suite is a directory build-e2e.sh filled: netpol.test and ginkgo.
type Suite string

// SuiteFromEnv is the suite the Makefile builds ($NFTPOL_UPSTREAM_SUITE).
func SuiteFromEnv() Suite { return Suite(os.Getenv("NFTPOL_UPSTREAM_SUITE")) }

// Missing returns why the suite cannot run, or "".
func (s Suite) Missing() string {
	return missing(string(s), "NFTPOL_UPSTREAM_SUITE", "make upstream-e2e", "make test and make conformance-upstream set it",
		"netpol.test", "ginkgo")
}

// missing says why a suite directory, taken from the environment variable
// env and built by make target, is unusable: unset, or without one of
// files; "" when it is complete.
func missing(dir, env, target, setBy string, files ...string) string {
	if dir == "" {
		return fmt.Sprintf("%s is not set (%s; %s)", env, target, setBy)
	}
	for _, b := range files {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return fmt.Sprintf("%s lacks %s (%s)", dir, b, target)
		}
	}
	return ""
}

// Skip is a group of specs left out, and why.
type Skip struct {
	// Pattern is a regular expression over the spec's full name.
	Pattern string
	Reason  string
}

// Skips are the only specs every run leaves out.
var Skips = []Skip{{
	Pattern: `\[Feature:SCTPConnectivity\]`,
	Reason:  "needs SCTP, which this kernel lacks (no /proc/net/sctp)",
}}

// Focus selects the whole Netpol suite.
const Focus = `\[sig-network\] Netpol`

// Options shape one run of the suite.
type Options struct {
	// Kubeconfig is the cluster's admin kubeconfig.
	Kubeconfig string
	// Focus are regular expressions over the specs' full names; a spec
	// runs when it matches any (default: Focus, the whole suite).
	Focus []string
	// Procs is the number of ginkgo processes running specs at once.
	Procs int
	// Dir receives the JSON report and the suite's output.
	Dir string
	// Timeout bounds the whole run (ginkgo's --timeout).
	Timeout time.Duration
	// Output receives ginkgo's console output as it runs.
	Output io.Writer
}

// Spec is the outcome of one spec.
type Spec struct {
	Name string
	// State is ginkgo's: passed, failed, skipped, timedout, ...
	State string
	// Reason says why a spec was skipped, or how it failed.
	Reason   string
	Duration time.Duration
}

// Result is the outcome of a run.
type Result struct {
	Specs []Spec
	// Duration is the run's wall-clock time, from the report.
	Duration time.Duration
	// Procs is the number of ginkgo processes.
	Procs int
}

// Count returns how many specs are in each state.
func (r *Result) Count() map[string]int {
	n := map[string]int{}
	for _, s := range r.Specs {
		n[s.State]++
	}
	return n
}

// Run runs the suite against the cluster behind opts.Kubeconfig and reads
// its report. A run in which specs failed is no error: the Result says
// which; an error means there is no report to read.
func Run(ctx context.Context, suite Suite, opts Options) (*Result, error) {
	if reason := suite.Missing(); reason != "" {
		return nil, errors.New(reason)
	}
	if opts.Procs < 1 {
		opts.Procs = 1
	}
	if len(opts.Focus) == 0 {
		opts.Focus = []string{Focus}
	}
	if opts.Timeout == 0 {
		opts.Timeout = 3 * time.Hour
	}
	if opts.Output == nil {
		opts.Output = io.Discard
	}
	if err := os.MkdirAll(opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("creating the report directory: %w", err)
	}
	report := filepath.Join(opts.Dir, "report.json")
	_ = os.Remove(report)
	var skips []string
	for _, s := range Skips {
		skips = append(skips, s.Pattern)
	}
	args := []string{
		"run", "--procs", fmt.Sprint(opts.Procs),
		"--focus", strings.Join(opts.Focus, "|"),
		"--skip", strings.Join(skips, "|"),
		"--timeout", opts.Timeout.String(),
		"--output-dir", opts.Dir, "--json-report", "report.json",
		"--no-color", "--poll-progress-after", "5m",
		filepath.Join(string(suite), "netpol.test"),
		"--",
		"--kubeconfig", opts.Kubeconfig,
		"--report-dir", opts.Dir,
	}
	cmd := exec.CommandContext(ctx, filepath.Join(string(suite), "ginkgo"), args...)
	cmd.Dir = opts.Dir
	// ginkgo compares its version with `go list -m` run in the suite's
	// directory, which lies inside the nftpol module, not the module
	// build-e2e.sh built the suite and ginkgo in (one module, so one
	// version): without modules that check finds nothing to compare.
	cmd.Env = append(os.Environ(), "GO111MODULE=off")
	cmd.Stdout, cmd.Stderr = opts.Output, opts.Output
	// ginkgo interrupts its processes on SIGINT and still writes the
	// report; a cancelled context sends that first.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 2 * time.Minute
	runErr := cmd.Run()
	data, err := os.ReadFile(report)
	if err != nil {
		return nil, fmt.Errorf("ginkgo wrote no report (%v): %w", runErr, err)
	}
	res, err := ParseReport(data)
	if err != nil {
		return nil, err
	}
	res.Procs = opts.Procs
	return res, nil
}

// The parts of ginkgo's JSON report (types.Report) the summary reads.
type ginkgoReport struct {
	RunTime     time.Duration
	SpecReports []struct {
		ContainerHierarchyTexts []string
		LeafNodeType            string
		LeafNodeText            string
		State                   string
		RunTime                 time.Duration
		Failure                 struct {
			Message  string
			Location struct {
				FileName   string
				LineNumber int
			}
		}
	}
}

// ParseReport reads ginkgo's JSON report: one Spec per It, with the
// reason of every skip (Skips) and failure (the first line of ginkgo's
// message). A failure outside the specs (the suite's setup) is a failed
// Spec named after its node.
func ParseReport(data []byte) (*Result, error) {
	var reports []ginkgoReport
	if err := json.Unmarshal(data, &reports); err != nil {
		return nil, fmt.Errorf("reading ginkgo's JSON report: %w", err)
	}
	res := &Result{}
	for _, r := range reports {
		res.Duration += r.RunTime
		for _, sr := range r.SpecReports {
			name := strings.Join(append(append([]string{}, sr.ContainerHierarchyTexts...), sr.LeafNodeText), " ")
			if sr.LeafNodeType != "It" {
				if sr.State == "passed" || sr.State == "skipped" {
					continue
				}
				name = sr.LeafNodeType + " " + name
			}
			s := Spec{Name: strings.TrimSpace(name), State: sr.State, Duration: sr.RunTime}
			switch {
			case sr.State == "skipped":
				s.Reason = skipReason(s.Name, sr.Failure.Message)
			case sr.State != "passed":
				msg, _, _ := strings.Cut(strings.TrimSpace(sr.Failure.Message), "\n")
				s.Reason = fmt.Sprintf("%s (%s:%d)", msg, filepath.Base(sr.Failure.Location.FileName), sr.Failure.Location.LineNumber)
			}
			res.Specs = append(res.Specs, s)
		}
	}
	return res, nil
}

// skipReason says why ginkgo skipped a spec: one of Skips, a skip the
// spec itself called (its message), or the focus leaving it out.
func skipReason(name, message string) string {
	for _, s := range Skips {
		if regexp.MustCompile(s.Pattern).MatchString(name) {
			return s.Reason
		}
	}
	if message != "" {
		msg, _, _ := strings.Cut(strings.TrimSpace(message), "\n")
		return msg
	}
	return "not selected by the focus"
}
