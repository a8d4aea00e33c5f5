package nft

import (
	"iter"
	"maps"
)

// elements is the content of one set: element key (see the key functions
// in sets.go) → value (the jump target of a verdict map element, else "").
//
// A spec made from the last compile's spec by a set's delta shares that
// spec's elements instead of copying them (a copy was ~5k map entries per
// family for each changed peer set at 100k pods, the largest part of a
// compile after one pod change): it holds the same base map and a small
// overlay of the keys added to and removed from it. A compiled spec is
// shared with the committed table and read by Diff, verification and
// dumps, so elements are never changed once another spec was derived from
// them; withDelta makes a new value. When the overlay outgrows
// overlayLimit, withDelta copies it into a new base, so that reads stay
// one or two map lookups and the copies cost O(1) per changed key
// amortized.
//
// The zero value is an empty set; put fills one that is being built.
type elements struct {
	base map[string]string
	add  map[string]string   // keys not in base, or hidden from it by del
	del  map[string]struct{} // keys of base not in the set (or whose value add holds)
	n    int
	// shared says base belongs to the elements these were derived from:
	// put writes the overlay then.
	shared bool
}

// elementsOf holds m as the elements of a set (m is not copied: the
// caller gives it up).
func elementsOf(m map[string]string) elements {
	return elements{base: m, n: len(m)}
}

// put sets key k to value v, in elements being built: not after a
// withDelta was made from them.
func (e *elements) put(k, v string) {
	if !e.shared {
		if e.base == nil {
			e.base = map[string]string{}
		}
		e.base[k] = v
		e.n = len(e.base)
		return
	}
	if _, had := e.lookup(k); !had {
		e.n++
	}
	if _, inBase := e.base[k]; inBase {
		e.hide(k)
	}
	e.putOverlay(k, v)
}

// lookup returns the value of key k and whether the set holds it.
func (e *elements) lookup(k string) (string, bool) {
	if v, ok := e.add[k]; ok {
		return v, true
	}
	if _, gone := e.del[k]; gone {
		return "", false
	}
	v, ok := e.base[k]
	return v, ok
}

// get returns the value of key k ("" when absent).
func (e *elements) get(k string) string {
	v, _ := e.lookup(k)
	return v
}

func (e *elements) len() int { return e.n }

// all yields every key and value, in no order.
func (e *elements) all() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		for k, v := range e.base {
			if _, gone := e.del[k]; gone {
				continue
			}
			if !yield(k, v) {
				return
			}
		}
		for k, v := range e.add {
			if !yield(k, v) {
				return
			}
		}
	}
}

// overlayLimit is the overlay size above which withDelta copies the
// elements into a new base: the copy is len(base) entries, so a limit
// growing with the base keeps its cost per changed key bounded, and the
// constant keeps small sets from being copied at every change.
func overlayLimit(base int) int { return 32 + base/32 }

// withDelta returns the elements of a set (values "") with the keys
// added added and the keys removed removed; e is not changed. A key
// already present is not added again and an absent one not removed.
func (e *elements) withDelta(added, removed []string) elements {
	if len(e.add)+len(e.del)+len(added)+len(removed) > overlayLimit(len(e.base)) {
		base := make(map[string]string, e.n+len(added))
		for k, v := range e.all() {
			base[k] = v
		}
		out := elementsOf(base)
		for _, k := range removed {
			delete(out.base, k)
		}
		for _, k := range added {
			out.base[k] = ""
		}
		out.n = len(out.base)
		return out
	}
	out := elements{base: e.base, add: maps.Clone(e.add), del: maps.Clone(e.del), n: e.n, shared: true}
	for _, k := range removed {
		if _, ok := out.lookup(k); !ok {
			continue
		}
		if _, ok := out.add[k]; ok {
			delete(out.add, k)
		} else {
			out.hide(k)
		}
		out.n--
	}
	for _, k := range added {
		if _, ok := out.lookup(k); ok {
			continue
		}
		if v, ok := out.base[k]; ok && v == "" {
			delete(out.del, k) // a removed key of base, back as it was
		} else {
			out.putOverlay(k, "") // hidden from base still, when there
		}
		out.n++
	}
	return out
}

// putOverlay and hide write the overlay of derived elements.
func (e *elements) putOverlay(k, v string) {
	if e.add == nil {
		e.add = map[string]string{}
	}
	e.add[k] = v
}

func (e *elements) hide(k string) {
	if e.del == nil {
		e.del = map[string]struct{}{}
	}
	e.del[k] = struct{}{}
}
