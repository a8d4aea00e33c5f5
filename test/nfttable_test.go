package test

import (
	"fmt"
	"sort"
	"strings"
)

// nftObject is one set, map or chain of a table as `nft -s list table`
// prints it: the oracle the tamper tests compare against, read by the nft
// tool and not by the agent's own decoder (which is under test).
type nftObject struct {
	kind, name string
	// lines are the object's body lines, trimmed, in order (rule order
	// matters), without the elements.
	lines []string
	// elems are the elements of a set or map: the kernel lists a hash
	// set's elements in no stable order, so they compare as a set.
	elems []string
}

func (o *nftObject) key() string { return o.kind + " " + o.name }

// nftTable is a parsed `nft -s list table` listing.
type nftTable struct {
	objects map[string]*nftObject // by "kind name"
}

// parseNftTable parses the listing of one table. It understands exactly
// the layout nft prints: a header line, one object per block opened by a
// line "<kind> <name> {" and closed by a line "}", element lists that may
// wrap over several lines.
func parseNftTable(text string) (*nftTable, error) {
	t := &nftTable{objects: map[string]*nftObject{}}
	var cur *nftObject
	var inElems bool
	for n, raw := range strings.Split(text, "\n") {
		line := strings.TrimSpace(raw)
		switch {
		case line == "" || strings.HasPrefix(line, "table "):
			continue
		case cur == nil && line == "}":
			continue // end of the table
		case cur == nil:
			kind, rest, ok := strings.Cut(line, " ")
			name, open := strings.CutSuffix(rest, " {")
			if !ok || !open || (kind != "set" && kind != "map" && kind != "chain") {
				return nil, fmt.Errorf("line %d: not an object header: %q", n+1, raw)
			}
			cur = &nftObject{kind: kind, name: name}
			if _, dup := t.objects[cur.key()]; dup {
				return nil, fmt.Errorf("line %d: %s listed twice", n+1, cur.key())
			}
			t.objects[cur.key()] = cur
		case inElems || strings.HasPrefix(line, "elements = {"):
			body := strings.TrimPrefix(line, "elements = {")
			body, closed := strings.CutSuffix(body, "}")
			for _, e := range strings.Split(body, ",") {
				if e = strings.TrimSpace(e); e != "" {
					cur.elems = append(cur.elems, e)
				}
			}
			inElems = !closed
		case line == "}":
			cur = nil
		default:
			cur.lines = append(cur.lines, line)
		}
	}
	if cur != nil || inElems {
		return nil, fmt.Errorf("listing ends inside %s", cur.key())
	}
	return t, nil
}

// canonical renders the table with objects sorted by kind and name and
// elements sorted, so that two listings of the same content are equal
// strings whatever order the kernel created or lists things in.
func (t *nftTable) canonical() string {
	keys := make([]string, 0, len(t.objects))
	for k := range t.objects {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		o := t.objects[k]
		fmt.Fprintf(&b, "%s {\n", k)
		for _, l := range o.lines {
			fmt.Fprintf(&b, "\t%s\n", l)
		}
		if len(o.elems) > 0 {
			elems := append([]string(nil), o.elems...)
			sort.Strings(elems)
			for _, e := range elems {
				fmt.Fprintf(&b, "\telement %s\n", e)
			}
		}
		b.WriteString("}\n")
	}
	return b.String()
}

// chainWith returns the name of the one chain with a rule containing s.
func (t *nftTable) chainWith(s string) (string, error) {
	var found []string
	for _, o := range t.objects {
		if o.kind != "chain" {
			continue
		}
		for _, l := range o.lines {
			if strings.Contains(l, s) {
				found = append(found, o.name)
				break
			}
		}
	}
	if len(found) != 1 {
		return "", fmt.Errorf("%d chains have a rule containing %q (%v), want 1", len(found), s, found)
	}
	return found[0], nil
}

// chainsWithPrefix returns the names of the chains whose name starts with p.
func (t *nftTable) chainsWithPrefix(p string) []string {
	var out []string
	for _, o := range t.objects {
		if o.kind == "chain" && strings.HasPrefix(o.name, p) {
			out = append(out, o.name)
		}
	}
	sort.Strings(out)
	return out
}

// setWithElements returns the name of the one set whose elements are
// exactly elems (in any order) and whose body has a line containing
// bodyHas ("" for any).
func (t *nftTable) setWithElements(elems []string, bodyHas string) (string, error) {
	want := append([]string(nil), elems...)
	sort.Strings(want)
	var found []string
	for _, o := range t.objects {
		if o.kind != "set" {
			continue
		}
		got := append([]string(nil), o.elems...)
		sort.Strings(got)
		if strings.Join(got, ",") != strings.Join(want, ",") {
			continue
		}
		if bodyHas != "" && !containsLine(o.lines, bodyHas) {
			continue
		}
		found = append(found, o.name)
	}
	if len(found) != 1 {
		return "", fmt.Errorf("%d sets hold exactly %v with %q (%v), want 1", len(found), elems, bodyHas, found)
	}
	return found[0], nil
}

func containsLine(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// lineDiff lists the lines only one of two canonical tables has, marked
// "-" (only in want) and "+" (only in got), under the object they are in.
func lineDiff(want, got string) string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		obj := ""
		for _, l := range strings.Split(s, "\n") {
			if strings.HasSuffix(l, " {") {
				obj = strings.TrimSuffix(l, " {")
			}
			m[obj+": "+strings.TrimSpace(l)]++
		}
		return m
	}
	w, g := count(want), count(got)
	var out []string
	for l, n := range w {
		if g[l] < n {
			out = append(out, "- "+l)
		}
	}
	for l, n := range g {
		if w[l] < n {
			out = append(out, "+ "+l)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i][2:] < out[j][2:] })
	if len(out) == 0 {
		// Same lines, other order: a reordered chain.
		return "same lines in another order:\n--- want\n" + want + "--- got\n" + got
	}
	return strings.Join(out, "\n")
}
