package nft

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/selectors"
)

// updateGolden rewrites the golden files under testdata/ from what the
// code produces: go test ./nft -run Golden -update. Review the diff.
var updateGolden = flag.Bool("update", false, "rewrite nft/testdata golden files")

// golden compares got with the file at testdata/path, or writes it.
func golden(t *testing.T, path, got string) {
	t.Helper()
	file := filepath.Join("testdata", path)
	if *updateGolden {
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(file, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(file)
	if err != nil {
		t.Fatalf("%v (run go test ./nft -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("%s differs from %s (go test ./nft -run %s -update rewrites it):\n%s", t.Name(), file, t.Name(), lineDiff(string(want), got))
	}
}

// lineDiff lists the lines only in want (-) and only in got (+), in order.
func lineDiff(want, got string) string {
	in := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	w, g := in(want), in(got)
	var b strings.Builder
	for _, l := range strings.Split(want, "\n") {
		if g[l] == 0 {
			b.WriteString("- " + l + "\n")
		} else {
			g[l]--
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if w[l] == 0 {
			b.WriteString("+ " + l + "\n")
		} else {
			w[l]--
		}
	}
	return b.String()
}

// TestGoldenTables pins the whole compiled table of typical clusters, as
// `nft -f` input: a change in what we program shows as a reviewable diff.
func TestGoldenTables(t *testing.T) {
	batch, _ := selectors.BuildModel("node-a", batchCluster())
	guarded := *batch
	guarded.Guard = selectors.PodAddrGuard{
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("fd00:10:244::/64")},
		Known:    mustAddrs("10.244.0.7", "10.244.0.9", "fd00:10:244::7"),
	}
	for _, tc := range []struct {
		name  string
		cfg   Config
		model *selectors.Model
	}{
		{"empty", Config{}, &selectors.Model{}},
		{"server-with-clients", Config{}, batch},
		{"server-with-clients-reject-logged", Config{Deny: DenyReject, LogDenied: true}, batch},
		{"every-kind", Config{}, everyKindModel()},
		// Every isolation chain in the lookup layout (lookup.go).
		{"server-with-clients-lookup", Config{LookupMinPolicies: 1}, batch},
		{"every-kind-lookup", Config{LookupMinPolicies: 1}, everyKindModel()},
		{"server-with-clients-pod-guard", Config{}, &guarded},
	} {
		t.Run(tc.name, func(t *testing.T) {
			golden(t, filepath.Join("tables", tc.name+".nft"), Compile(tc.model, tc.cfg).NftText())
		})
	}
}
