// Command mutants proves that the property tests and fuzz targets find
// bugs: it injects known bugs, one at a time, into the model builder and
// the compiler of a temporary copy of the repository (never the real
// tree), runs the tests that hold them against the reference evaluator
// with a bounded budget (and, for the ClusterNetworkPolicy bugs, the
// ClusterNetworkPolicy conformance cases with real packets, which need
// root and KUBEBUILDER_ASSETS as make test does), and reports each bug
// CAUGHT (by which test, after how long) or MISSED. It exits non-zero when a bug is missed, or when a
// mutation no longer applies because the code it edits changed (update
// the mutation then).
//
//	go run ./test/mutants [-fuzztime 20s] [-only NAME]   (make mutants)
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// mutant is one injected bug: the only occurrence of old in file becomes
// new.
type mutant struct {
	name     string
	file     string
	old, new string
	// pkg is where the property test and fuzz target that should catch
	// it live: "selectors" or "nft".
	pkg string
	// packets also runs the ClusterNetworkPolicy conformance cases with
	// real packets (test/, as root, with the agent built from the
	// mutated copy): the proof that the bug shows on the wire.
	packets bool
	// property and fuzz, when set, are the tests in pkg that should
	// catch it instead of targetsOf's.
	property, fuzz string
}

// mutations are the injected bugs, in the order they run.
func mutations() []mutant {
	return []mutant{
		{"policyTypes default: every policy isolates egress", "selectors/parse.go",
			"p.types[Egress] = len(np.Spec.Egress) > 0", "p.types[Egress] = len(np.Spec.Egress) >= 0", "selectors", false, "", ""},
		{"ipBlock except not subtracted", "selectors/parse.go",
			"ranges = subtractRange(ranges, prefixRange(ex))", "_ = subtractRange(ranges, prefixRange(ex))", "selectors", false, "", ""},
		{"endPort off by one (exclusive)", "selectors/parse.go",
			"last = int(*np.EndPort)", "last = int(*np.EndPort) - 1", "selectors", false, "", ""},
		{"egress named port resolved on the source pods", "selectors/build.go",
			"candidates = b.egressCandidates(cp, r)", "candidates = selected", "selectors", false, "", ""},
		{"namespaceSelector with podSelector: podSelector dropped", "selectors/parse.go",
			"pe.podSel = podSel", "_ = podSel", "selectors", false, "", ""},
		{"IPv6 ipBlock ignored", "selectors/parse.go",
			"cidr = cidr.Masked()", "cidr = cidr.Masked()\n\tif cidr.Addr().Is6() {\n\t\treturn ipBlock{}, \"cidr=\" + cidr.String(), nil\n\t}", "selectors", false, "", ""},
		{"shared address: the older pod wins", "selectors/state.go",
			"return p.Created.After(q.Created)", "return p.Created.Before(q.Created)", "selectors", false, "", ""},
		{"plain init containers' named ports count", "selectors/state.go",
			"if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {", "if c.RestartPolicy == nil || *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {", "selectors", false, "", ""},
		{"terminal pods are endpoints", "selectors/state.go",
			"return !p.HostNetwork && !p.Terminal && len(p.IPs) > 0", "return !p.HostNetwork && len(p.IPs) > 0", "selectors", false, "", ""},
		{"compiler: IPv4 daddr read at the saddr offset", "nft/rules.go",
			"\t\treturn 16, 4\n", "\t\treturn 12, 4\n", "nft", false, "", ""},
		{"compiler: port range ends one early", "nft/rules.go",
			"Data: be16(r.portLast)})", "Data: be16(r.portLast - 1)})", "nft", false, "", ""},
		{"compiler: interval end element at last, not last+1", "nft/sets.go",
			"if end, ok := increment(last); ok {", "if end, ok := last, true; ok {", "nft", false, "", ""},
		{"CNP: Pass treated as Accept", "selectors/cnp.go",
			"r.action = ActionPass", "r.action = ActionAccept", "selectors", true, "", ""},
		{"CNP: priority order reversed", "selectors/model.go",
			"return aPriority < bPriority", "return aPriority > bPriority", "selectors", true, "", ""},
		{"CNP: pods subject ignores its podSelector", "selectors/cnpbuild.go",
			"cp.subjectPod == nil || cp.subjectPod.Matches(labels.Set(pod.Labels))", "cp.subjectPod == nil || cp.subjectPod.Matches(labels.Set(pod.Labels)) || true", "selectors", true, "", ""},
		{"CNP compiler: Baseline applied over a NetworkPolicy", "nft/cluster.go",
			`if next == "" && len(t.Baseline) > 0 {`, "if len(t.Baseline) > 0 {", "nft", true, "", ""},
		{"audit: a NetworkPolicy in audit mode is enforced", "selectors/build.go",
			"case cp.audit:", "case cp.audit && false:", "nft", false, auditProperty, auditFuzz},
		{"audit compiler: would-deny counted before the real chains decide", "nft/audit.go",
			"auditPrio+2*int32(k)+bc.prio", "-auditPrio+2*int32(k)+bc.prio", "nft", false, auditProperty, auditFuzz},
		{"audit compiler: the hypothesis leaves the audited NetworkPolicy out", "nft/audit.go",
			"keys = slices.Sorted(slices.Values(append(slices.Clone(keys), p)))", "keys = slices.Clone(keys)", "nft", false, auditProperty, auditFuzz},
		{"audit compiler: an audited ClusterNetworkPolicy inserted last in its tier", "nft/audit.go",
			"if q != nil && selectors.ClusterPolicyBefore(cp.Priority, cp.Name, q.Priority, q.Name) {", "if q == nil {", "nft", false, auditProperty, auditFuzz},
	}
}

// The tests that hold the audit mode (nft/audit_test.go) against the
// evaluator.
const (
	auditProperty = "TestAuditAgreesWithEvaluator"
	auditFuzz     = "FuzzAuditAgreesWithEvaluator"
)

// targetsOf returns the tests that hold pkg's compiled form against the
// reference evaluator, cheapest first.
func targetsOf(pkg string) (property, fuzz string) {
	if pkg == "nft" {
		return "TestCompiledTablesAgreeWithEvaluator", "FuzzCompiledTablesAgreeWithEvaluate"
	}
	return "TestModelAgreesWithEvaluator", "FuzzModelAgreesWithEvaluate"
}

func main() {
	fuzztime := flag.Duration("fuzztime", 20*time.Second, "fuzzing budget per mutant")
	only := flag.String("only", "", "run only the mutants whose name contains this")
	flag.Parse()
	if err := run(*fuzztime, *only, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "mutants:", err)
		os.Exit(1)
	}
}

func run(fuzztime time.Duration, only string, out io.Writer) error {
	root, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("finding the repository: %w", err)
	}
	tmp, err := os.MkdirTemp("", "nftpol-mutants-")
	if err != nil {
		return fmt.Errorf("creating the scratch copy: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := copyRepo(root, tmp); err != nil {
		return err
	}
	failed, ran := 0, 0
	start := time.Now()
	for _, m := range mutations() {
		if only != "" && !strings.Contains(m.name, only) {
			continue
		}
		ran++
		verdict, err := try(tmp, m, fuzztime)
		if err != nil {
			verdict = "ERROR: " + err.Error()
		}
		if !strings.HasPrefix(verdict, "CAUGHT") {
			failed++
		}
		fmt.Fprintf(out, "%-60s %s\n", m.name, verdict)
	}
	fmt.Fprintf(out, "total %s\n", time.Since(start).Round(time.Second))
	if ran == 0 {
		return fmt.Errorf("no mutant matches -only %q", only)
	}
	if failed > 0 {
		return fmt.Errorf("%d mutant(s) not caught", failed)
	}
	return nil
}

// try applies m to the copy in dir, runs the tests, and restores the file.
func try(dir string, m mutant, fuzztime time.Duration) (string, error) {
	path := filepath.Join(dir, m.file)
	orig, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("reading %s: %w", m.file, err)
	}
	if n := bytes.Count(orig, []byte(m.old)); n != 1 {
		return fmt.Sprintf("STALE: %q occurs %d times in %s, update the mutation", m.old, n, m.file), nil
	}
	if err := os.WriteFile(path, bytes.Replace(orig, []byte(m.old), []byte(m.new), 1), 0o644); err != nil {
		return "", fmt.Errorf("mutating %s: %w", m.file, err)
	}
	defer os.WriteFile(path, orig, 0o644)

	property, fuzz := targetsOf(m.pkg)
	if m.property != "" {
		property, fuzz = m.property, m.fuzz
	}
	corpus := filepath.Join(dir, m.pkg, "testdata", "fuzz", fuzz)
	seeds, err := os.ReadDir(corpus)
	if err != nil {
		return "", fmt.Errorf("reading the seeds of %s: %w", fuzz, err)
	}
	// A failing input the fuzzer writes into the copy would be a seed of
	// the next mutant's run: remove it so each mutant starts from the
	// committed seeds.
	defer removeNewFiles(corpus, seeds)

	// Both the property test and the fuzz target run, each on its own, so
	// the report says what each is worth. The fuzzer minimizes every new
	// input for up to 60 s by default, at a second or more per run of a
	// whole cluster: 5 runs keep the budget for searching.
	runs := []struct {
		name string
		args []string
	}{
		{property, []string{"test", "-count=1", "-run", "^" + property + "$", "./" + m.pkg}},
		{fuzz, []string{"test", "-run", "^$", "-fuzz", "^" + fuzz + "$", "-fuzztime", fuzztime.String(), "-fuzzminimizetime", "5x", "./" + m.pkg}},
	}
	if m.packets {
		runs = append(runs, struct {
			name string
			args []string
		}{packetTest, []string{"test", "-v", "-count=1", "-failfast", "-timeout", "10m", "-run", "^" + packetTest + "$", "./test"}})
	}
	var caught []string
	for _, s := range runs {
		began := time.Now()
		cmd := exec.Command("go", s.args...)
		cmd.Dir = dir
		// NFTPOL_BIN (make exports it) would run the real tree's agent:
		// without it the testbed builds the agent from the mutated copy.
		cmd.Env = append(withoutVar(os.Environ(), "NFTPOL_BIN"), "GOFLAGS=-buildvcs=false")
		output, err := cmd.CombinedOutput()
		took := time.Since(began).Round(100 * time.Millisecond)
		var exit *exec.ExitError
		switch {
		case bytes.Contains(output, []byte("--- SKIP")):
			// A skipped test proves nothing: a missing requirement
			// (root, KUBEBUILDER_ASSETS) must not read as "not caught"
			// (-v makes go test print the skip).
			return "", fmt.Errorf("%s skipped, it cannot run here:\n%s", s.name, output)
		case err == nil:
			continue // passed: not caught by this one
		case !errors.As(err, &exit):
			return "", fmt.Errorf("running go %s: %w", strings.Join(s.args, " "), err)
		case bytes.Contains(output, []byte("[build failed]")) || bytes.Contains(output, []byte("[setup failed]")):
			return fmt.Sprintf("INVALID: the mutant does not build:\n%s", output), nil
		}
		how := ""
		switch {
		case bytes.Contains(output, []byte("seed corpus")):
			how = ", on a corpus entry (testdata/fuzz or the local fuzz cache)"
		case bytes.Contains(output, []byte("Failing input written")):
			how = ", on a new input"
		}
		caught = append(caught, fmt.Sprintf("%s in %s (test binary %s%s)", s.name, took, testTime(output), how))
	}
	if len(caught) == 0 {
		return "MISSED", nil
	}
	return "CAUGHT by " + strings.Join(caught, "; "), nil
}

// packetTest runs the ClusterNetworkPolicy conformance cases with real
// packets; it needs root and KUBEBUILDER_ASSETS, as make test does.
const packetTest = "TestClusterNetworkPolicyConformance"

// withoutVar returns env without the variable name.
func withoutVar(env []string, name string) []string {
	var out []string
	for _, kv := range env {
		if !strings.HasPrefix(kv, name+"=") {
			out = append(out, kv)
		}
	}
	return out
}

// testTime is the run time go test reports for the failing package, the
// test binary alone without its build.
func testTime(output []byte) string {
	if m := regexp.MustCompile(`(?m)^FAIL\s+\S+\s+([0-9.]+s)$`).FindSubmatch(output); m != nil {
		return string(m[1])
	}
	return "?"
}

// removeNewFiles removes from dir what is not in before.
func removeNewFiles(dir string, before []os.DirEntry) {
	keep := map[string]bool{}
	for _, e := range before {
		keep[e.Name()] = true
	}
	now, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range now {
		if !keep[e.Name()] {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

// copyRepo copies the files git knows of (tracked, or new and not
// ignored) from root to dir: the source and test data, not caches.
func copyRepo(root, dir string) error {
	cmd := exec.Command("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard")
	cmd.Dir = root
	list, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("listing the repository's files: %w", err)
	}
	for _, name := range strings.Split(strings.TrimRight(string(list), "\x00"), "\x00") {
		info, err := os.Lstat(filepath.Join(root, name))
		if errors.Is(err, os.ErrNotExist) || (err == nil && !info.Mode().IsRegular()) {
			continue // deleted in the working tree, or a link such as .cache
		}
		data, err := os.ReadFile(filepath.Join(root, name))
		if err != nil {
			return fmt.Errorf("copying %s: %w", name, err)
		}
		if err := os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755); err != nil {
			return fmt.Errorf("copying %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("copying %s: %w", name, err)
		}
	}
	return nil
}
