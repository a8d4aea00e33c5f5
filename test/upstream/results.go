package upstream

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// Summary writes the counts, the time and every spec that did not pass,
// with its reason: what a run prints when it ends.
func (r *Result) Summary(w io.Writer, suite string) {
	n := r.Count()
	fmt.Fprintf(w, "%s: %d passed, %d failed, %d skipped of %d specs in %s (%s)\n",
		suite, n["passed"], r.Failed(), n["skipped"], len(r.Specs), r.Duration.Round(time.Second), processes(r.Procs))
	skipped := map[string]int{}
	var reasons []string
	for _, s := range r.Specs {
		switch s.State {
		case "passed":
		case "skipped":
			if skipped[s.Reason] == 0 {
				reasons = append(reasons, s.Reason)
			}
			skipped[s.Reason]++
		default:
			fmt.Fprintf(w, "  %s: %s\n    %s\n", s.State, s.Name, s.Reason)
		}
	}
	for _, reason := range reasons {
		fmt.Fprintf(w, "  skipped %d: %s\n", skipped[reason], reason)
	}
}

// Failed is the number of specs that neither passed nor were skipped.
func (r *Result) Failed() int {
	failed := 0
	for _, s := range r.Specs {
		if s.State != "passed" && s.State != "skipped" {
			failed++
		}
	}
	return failed
}

// Machine describes where a run happened, for the results file.
type Machine struct {
	Kernel, CPU string
	Cores       int
	Nodes       int
	ProxyMode   string
	Cluster     string
}

// ReadMachine fills the kernel, CPU and core count from /proc.
func ReadMachine() Machine {
	m := Machine{Cores: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// WriteResults writes one suite's part of the results file: a heading,
// what the suite is, the counts and time, the cluster and machine, and
// one row per spec.
func (r *Result) WriteResults(w io.Writer, title, about string, m Machine, when time.Time) {
	n := r.Count()
	fmt.Fprintf(w, "## %s\n\n%s\n\n", title, about)
	fmt.Fprintf(w, "| | |\n|---|---|\n")
	fmt.Fprintf(w, "| run | %s |\n", when.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "| passed | %d |\n| failed | %d |\n| skipped | %d |\n| specs | %d |\n", n["passed"], r.Failed(), n["skipped"], len(r.Specs))
	fmt.Fprintf(w, "| suite time | %s (%s) |\n", r.Duration.Round(time.Second), processes(r.Procs))
	fmt.Fprintf(w, "| cluster | %s |\n", m.Cluster)
	fmt.Fprintf(w, "| machine | %d cores, %s, kernel %s |\n\n", m.Cores, m.CPU, m.Kernel)
	specs := append([]Spec(nil), r.Specs...)
	sort.SliceStable(specs, func(i, j int) bool { return specs[i].Name < specs[j].Name })
	fmt.Fprintf(w, "| spec | result | time | reason |\n|---|---|---|---|\n")
	for _, s := range specs {
		fmt.Fprintf(w, "| %s | %s | %s | %s |\n", cell(s.Name), s.State, s.Duration.Round(time.Second), cell(s.Reason))
	}
	fmt.Fprintln(w)
}

// cell keeps a table cell on one row.
func cell(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}

func processes(n int) string {
	if n == 1 {
		return "1 process"
	}
	return fmt.Sprintf("%d processes", n)
}
