package nft

import (
	"maps"
	"math/rand"
	"slices"
	"strconv"
	"testing"
)

// TestElementsWithDeltaEqualPlainMaps: elements derived by random deltas
// from random earlier versions (a history that branches, as when a commit
// fails and the next compile starts from an older table) hold exactly
// what a plain map with the same changes holds, and no version changes
// when another is derived from it. Sizes cross overlayLimit both ways, so
// both the overlay and the copy into a new base are taken.
func TestElementsWithDeltaEqualPlainMaps(t *testing.T) {
	for _, size := range []int{0, 5, 200, 3000} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			r := rand.New(rand.NewSource(int64(size)))
			key := func() string { return "k" + strconv.Itoa(r.Intn(2*size+20)) }
			first := map[string]string{}
			var e elements
			for range size {
				k := key()
				first[k] = ""
				e.put(k, "")
			}
			versions := []elements{e}
			want := []map[string]string{first}
			for step := range 400 {
				from := len(versions) - 1
				if r.Intn(4) == 0 {
					from = r.Intn(len(versions))
				}
				next := maps.Clone(want[from])
				var added, removed []string
				for range r.Intn(4) + r.Intn(2)*r.Intn(size/8+1) {
					k := key()
					if _, ok := next[k]; ok && !slices.Contains(added, k) && !slices.Contains(removed, k) {
						removed = append(removed, k)
						delete(next, k)
					} else if !ok && !slices.Contains(removed, k) && !slices.Contains(added, k) {
						added = append(added, k)
						next[k] = ""
					}
				}
				versions = append(versions, versions[from].withDelta(added, removed))
				want = append(want, next)
				for _, i := range []int{from, len(versions) - 1} {
					checkElements(t, step, &versions[i], want[i])
				}
			}
			for i := range versions {
				checkElements(t, -1, &versions[i], want[i])
			}
		})
	}
}

func checkElements(t *testing.T, step int, e *elements, want map[string]string) {
	t.Helper()
	if got := maps.Collect(e.all()); !maps.Equal(got, want) {
		var extra, missing []string
		for k := range got {
			if _, ok := want[k]; !ok {
				extra = append(extra, k)
			}
		}
		for k := range want {
			if _, ok := got[k]; !ok {
				missing = append(missing, k)
			}
		}
		t.Fatalf("step %d: %d elements, want %d: extra %v, missing %v", step, len(got), len(want), extra, missing)
	}
	if e.len() != len(want) {
		t.Fatalf("step %d: len %d, want %d", step, e.len(), len(want))
	}
	for k, v := range want {
		if got, ok := e.lookup(k); !ok || got != v {
			t.Fatalf("step %d: lookup(%q) = %q, %v", step, k, got, ok)
		}
	}
	if _, ok := e.lookup("absent"); ok {
		t.Fatalf("step %d: holds a key never added", step)
	}
}

// TestElementsPutAfterDelta: a key put into derived elements (the lookup
// layout may one day build on them) is seen there only, also when it
// replaces the value of a key of the shared base.
func TestElementsPutAfterDelta(t *testing.T) {
	var base elements
	base.put("a", "x")
	base.put("b", "")
	d := base.withDelta([]string{"c"}, []string{"b"})
	d.put("a", "y")
	d.put("b", "z")
	checkElements(t, 0, &base, map[string]string{"a": "x", "b": ""})
	checkElements(t, 1, &d, map[string]string{"a": "y", "b": "z", "c": ""})
}
