package manifests

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/runtime"
)

// softLimitPercent is the share of the memory limit the agent gives the Go
// runtime as its soft limit (main.memoryLimitPercent; main's tests keep it
// within 80-90 %).
const softLimitPercent = 85

// rssHeadroom is how far the soft limit must sit above the RSS measured at
// a cluster size: a relist after an API server outage holds a second copy
// of the listed objects while the cache still holds the first, and the
// collector needs room to work before the OOM killer.
const rssHeadroom = 1.3

const mib = 1 << 20

// measuredRSS reads BENCHMARKS.md's "| agent RSS ..., <N>k pods | <X> MiB
// | ..." rows and returns the largest RSS per cluster size (pods). The two
// cells after the name are read (a table may give an earlier run's figure
// beside this run's); a cell holding a target ("< 200 MiB") is not a
// measurement.
func measuredRSS(t *testing.T) map[int]float64 {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "BENCHMARKS.md"))
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile(`(?m)^\| agent RSS[^|]*?, (\d+)k pods \|([^|]*)\|([^|]*)\|`)
	figure := regexp.MustCompile(`^\s*([\d.]+) MiB\s*$`)
	out := map[int]float64{}
	for _, m := range row.FindAllStringSubmatch(string(b), -1) {
		k, _ := strconv.Atoi(m[1])
		for _, cell := range m[2:] {
			f := figure.FindStringSubmatch(cell)
			if f == nil {
				continue // empty, or a target
			}
			v, err := strconv.ParseFloat(f[1], 64)
			if err != nil {
				t.Fatalf("BENCHMARKS.md row %q: %v", m[0], err)
			}
			if v > out[k*1000] {
				out[k*1000] = v
			}
		}
	}
	if out[10_000] == 0 || out[100_000] == 0 {
		t.Fatalf("BENCHMARKS.md lacks the agent RSS at 10k and 100k pods: %v", out)
	}
	return out
}

// sizingRow is one row of the README's sizing table.
type sizingRow struct {
	pods           int
	shipped        bool
	request, limit resource.Quantity
	softLimitMiB   int
}

// readmeSizing parses the README's rows "| up to <N>k pods[ (shipped)] |
// <RSS> | <request> | <limit> | <soft limit> MiB |".
func readmeSizing(t *testing.T) []sizingRow {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^\| up to (\d+)k pods( \(shipped\))? \|[^|]*\| (\S+) \| (\S+) \| (\d+) MiB \|$`)
	var rows []sizingRow
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		k, _ := strconv.Atoi(m[1])
		soft, _ := strconv.Atoi(m[5])
		req, err1 := resource.ParseQuantity(m[3])
		lim, err2 := resource.ParseQuantity(m[4])
		if err1 != nil || err2 != nil {
			t.Fatalf("README sizing row %q: %v %v", m[0], err1, err2)
		}
		rows = append(rows, sizingRow{pods: k * 1000, shipped: m[2] != "", request: req, limit: lim, softLimitMiB: soft})
	}
	if len(rows) < 2 {
		t.Fatalf("README has no sizing table (rows \"| up to <N>k pods | ...\"); found %d rows", len(rows))
	}
	return rows
}

// TestMemorySizingFitsTheMeasuredRSS: the shipped memory request and limit
// are the README's row for the advertised scale; in every row the request
// covers the RSS measured at that size (BENCHMARKS.md; between measured
// sizes, the linear interpolation), the soft limit is 85 % of the limit and
// leaves headroom above that RSS.
func TestMemorySizingFitsTheMeasuredRSS(t *testing.T) {
	rss := measuredRSS(t)
	rows := readmeSizing(t)
	var ds appsv1.DaemonSet
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(find(t, render(t), "DaemonSet").Object, &ds); err != nil {
		t.Fatal(err)
	}
	res := ds.Spec.Template.Spec.Containers[0].Resources
	shipped := 0
	for _, r := range rows {
		name := fmt.Sprintf("%dk pods", r.pods/1000)
		want := interpolate(rss, r.pods)
		reqMiB := float64(r.request.Value()) / mib
		limMiB := float64(r.limit.Value()) / mib
		soft := r.limit.Value() / 100 * softLimitPercent / mib
		if reqMiB < want {
			t.Errorf("%s: request %s below the RSS %.1f MiB", name, r.request.String(), want)
		}
		if limMiB < reqMiB {
			t.Errorf("%s: limit %s below the request %s", name, r.limit.String(), r.request.String())
		}
		if float64(soft) < want*rssHeadroom {
			t.Errorf("%s: soft limit %d MiB leaves less than %.0f %% headroom above the RSS %.1f MiB", name, soft, (rssHeadroom-1)*100, want)
		}
		if int64(r.softLimitMiB) != soft {
			t.Errorf("%s: README says soft limit %d MiB, %d %% of %s is %d MiB", name, r.softLimitMiB, softLimitPercent, r.limit.String(), soft)
		}
		if r.shipped {
			shipped++
			if r.pods < 100_000 {
				t.Errorf("the shipped row is for %s, below the advertised 100k pods", name)
			}
			if !res.Requests.Memory().Equal(r.request) || !res.Limits.Memory().Equal(r.limit) {
				t.Errorf("config/agent: memory request %s limit %s, README's shipped row says %s / %s",
					res.Requests.Memory(), res.Limits.Memory(), r.request.String(), r.limit.String())
			}
		}
	}
	if shipped != 1 {
		t.Errorf("%d README sizing rows marked (shipped), want 1", shipped)
	}
}

// interpolate returns the RSS measured at pods, or the linear
// interpolation between the measured sizes around it (beyond them, the
// nearest line continued).
func interpolate(rss map[int]float64, pods int) float64 {
	if v, ok := rss[pods]; ok {
		return v
	}
	lo, hi := 10_000, 100_000
	return rss[lo] + (rss[hi]-rss[lo])*float64(pods-lo)/float64(hi-lo)
}

func TestInterpolate(t *testing.T) {
	rss := map[int]float64{10_000: 75, 100_000: 300}
	for _, tt := range []struct {
		pods int
		want float64
	}{{10_000, 75}, {100_000, 300}, {55_000, 187.5}, {5_000, 62.5}} {
		if got := interpolate(rss, tt.pods); strings.TrimSpace(fmt.Sprintf("%.1f", got)) != fmt.Sprintf("%.1f", tt.want) {
			t.Errorf("interpolate(%d) = %v, want %v", tt.pods, got, tt.want)
		}
	}
}
