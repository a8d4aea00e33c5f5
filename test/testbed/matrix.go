package testbed

import (
	"fmt"
	"strings"
)

// Matrix is a reachability truth table: rows are sources, columns are
// destinations, by pod key.
type Matrix struct {
	Keys  []string
	cells map[[2]string]bool
}

// NewMatrix returns a matrix with every cell set to fill.
func NewMatrix(keys []string, fill bool) *Matrix {
	m := &Matrix{Keys: append([]string(nil), keys...), cells: map[[2]string]bool{}}
	for _, f := range keys {
		for _, t := range keys {
			m.cells[[2]string{f, t}] = fill
		}
	}
	return m
}

// Set records a cell.
func (m *Matrix) Set(from, to string, reachable bool) { m.cells[[2]string{from, to}] = reachable }

// Get returns a cell.
func (m *Matrix) Get(from, to string) bool { return m.cells[[2]string{from, to}] }

// Wrong returns the cells where m differs from expected, as "from -> to:
// observed X, expected Y": failures, when expected is what must be.
func (m *Matrix) Wrong(expected *Matrix) []string {
	var out []string
	for _, c := range m.differing(expected) {
		out = append(out, fmt.Sprintf("%s -> %s: observed %s, expected %s", c[0], c[1], word(m.Get(c[0], c[1])), word(expected.Get(c[0], c[1]))))
	}
	return out
}

// Changes returns the cells where m differs from an earlier matrix, as
// "from -> to: now X (was Y)". Nothing in it reads as a failure: before
// is an earlier state, not an expectation.
func (m *Matrix) Changes(before *Matrix) []string {
	var out []string
	for _, c := range m.differing(before) {
		out = append(out, fmt.Sprintf("%s -> %s: now %s (was %s)", c[0], c[1], word(m.Get(c[0], c[1])), word(before.Get(c[0], c[1]))))
	}
	return out
}

// differing returns the (from, to) cells where m and other differ, rows
// then columns in key order.
func (m *Matrix) differing(other *Matrix) [][2]string {
	var out [][2]string
	for _, f := range m.Keys {
		for _, t := range m.Keys {
			if m.Get(f, t) != other.Get(f, t) {
				out = append(out, [2]string{f, t})
			}
		}
	}
	return out
}

// Leaks returns the cells m observed reachable where expected denies, as
// "from -> to": the failures that can never come from a slow probe.
func (m *Matrix) Leaks(expected *Matrix) []string {
	var out []string
	for _, f := range m.Keys {
		for _, t := range m.Keys {
			if m.Get(f, t) && !expected.Get(f, t) {
				out = append(out, fmt.Sprintf("%s -> %s: observed reachable, expected blocked", f, t))
			}
		}
	}
	return out
}

// Equal reports whether both matrices agree on every cell.
func (m *Matrix) Equal(other *Matrix) bool { return len(m.Wrong(other)) == 0 }

func word(b bool) string {
	if b {
		return "reachable"
	}
	return "blocked"
}

// String prints the matrix like the upstream e2e suite: '.' reachable,
// 'X' blocked.
func (m *Matrix) String() string { return m.render(nil) }

// Diff prints the observed matrix with every cell that differs from
// expected marked '*' after it, then lists them.
func (m *Matrix) Diff(expected *Matrix) string {
	wrong := m.Wrong(expected)
	if len(wrong) == 0 {
		return "(matrices agree)\n" + m.String()
	}
	return m.render(expected) + strings.Join(wrong, "\n") + "\n"
}

// ChangesFrom prints m with every cell that changed since before marked
// '*' after it, then lists the changes (Changes).
func (m *Matrix) ChangesFrom(before *Matrix) string {
	changes := m.Changes(before)
	if len(changes) == 0 {
		return m.String() + "(no cell changed)\n"
	}
	return m.render(before) + strings.Join(changes, "\n") + "\n"
}

func (m *Matrix) render(expected *Matrix) string {
	var b strings.Builder
	b.WriteString("-")
	for _, t := range m.Keys {
		b.WriteString("\t" + t)
	}
	b.WriteString("\n")
	for _, f := range m.Keys {
		b.WriteString(f)
		for _, t := range m.Keys {
			cell := "X"
			if m.Get(f, t) {
				cell = "."
			}
			if expected != nil && expected.Get(f, t) != m.Get(f, t) {
				cell += "*"
			}
			b.WriteString("\t" + cell)
		}
		b.WriteString("\n")
	}
	return b.String()
}
