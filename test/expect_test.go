package test

import (
	"fmt"
	"sort"
	"strings"
)

// expectation is the reachability a case expects for one protocol and
// port, on the upstream model: cells keyed "from|to" by pod keys
// "namespace/name". It starts all allowed; a case then narrows it with the
// same vocabulary the upstream e2e suite uses (deny to a target, allow
// from a peer), written as "ns/pod" patterns where "*" is any.
type expectation struct {
	proto string
	port  int
	pods  []string
	cells map[string]bool
}

func newExpectation(pods []string, proto string, port int) *expectation {
	e := &expectation{proto: proto, port: port, pods: pods, cells: map[string]bool{}}
	for _, from := range pods {
		for _, to := range pods {
			e.cells[from+"|"+to] = true
		}
	}
	return e
}

// matches reports whether the pod key "ns/pod" matches a pattern "ns/pod"
// where either side may be "*".
func matches(pattern, key string) bool {
	pns, ppod, _ := strings.Cut(pattern, "/")
	kns, kpod, _ := strings.Cut(key, "/")
	return (pns == "*" || pns == kns) && (ppod == "*" || ppod == kpod)
}

func (e *expectation) set(from, to string, allowed bool) {
	for _, f := range e.pods {
		if !matches(from, f) {
			continue
		}
		for _, t := range e.pods {
			if matches(to, t) {
				e.cells[f+"|"+t] = allowed
			}
		}
	}
}

// allow and deny set every cell from pods matching from to pods matching to.
func (e *expectation) allow(from, to string) { e.set(from, to, true) }
func (e *expectation) deny(from, to string)  { e.set(from, to, false) }

// isolateIngress denies everything to the pods matching to, then allows
// the given peers.
func (e *expectation) isolateIngress(to string, allowedFrom ...string) {
	e.deny("*/*", to)
	for _, f := range allowedFrom {
		e.allow(f, to)
	}
}

// isolateEgress denies everything from the pods matching from, then allows
// the given destinations.
func (e *expectation) isolateEgress(from string, allowedTo ...string) {
	e.deny(from, "*/*")
	for _, t := range allowedTo {
		e.allow(from, t)
	}
}

// get returns the expected verdict; a pod always reaches itself (the
// traffic never leaves its network namespace).
func (e *expectation) get(from, to string) bool {
	if from == to {
		return true
	}
	return e.cells[from+"|"+to]
}

func (e *expectation) String() string {
	pods := append([]string(nil), e.pods...)
	sort.Strings(pods)
	var b strings.Builder
	fmt.Fprintf(&b, "%s/%d\t%s\n", e.proto, e.port, strings.Join(pods, "\t"))
	for _, f := range pods {
		b.WriteString(f)
		for _, t := range pods {
			if e.get(f, t) {
				b.WriteString("\t.")
			} else {
				b.WriteString("\tX")
			}
		}
		b.WriteString("\n")
	}
	return b.String()
}
