package nft

import (
	"slices"
	"sort"
)

// Plan is the difference between the committed table and the desired one:
// exactly what one transaction must do. Names are sorted so a plan is
// deterministic.
type Plan struct {
	// Full replaces the whole table (first sync, after a failed commit or
	// drift): delete and re-create it in the same transaction.
	Full bool

	AddSets, DelSets []string
	// AddChains are new chains (their rules are written too); RewriteChains
	// exist already and get flushed and rewritten; DelChains go.
	AddChains, RewriteChains, DelChains []string
	// AddElems and DelElems are element keys per set.
	AddElems, DelElems map[string][]string
}

// PlanStats counts what a plan changes.
type PlanStats struct {
	Full                                        bool
	SetsAdded, SetsDeleted                      int
	ChainsAdded, ChainsRewritten, ChainsDeleted int
	RulesWritten                                int
	ElementsAdded, ElementsDeleted              int
}

// Empty reports whether the plan changes nothing.
func (p *Plan) Empty() bool {
	return !p.Full && len(p.AddSets)+len(p.DelSets)+len(p.AddChains)+len(p.RewriteChains)+len(p.DelChains)+len(p.AddElems)+len(p.DelElems) == 0
}

// Diff returns the plan that turns committed into desired. A nil committed
// table means its content is unknown: the plan replaces the table whole.
func Diff(committed, desired *Ruleset) *Plan {
	p := &Plan{AddElems: map[string][]string{}, DelElems: map[string][]string{}}
	if committed == nil {
		p.Full = true
		committed = &Ruleset{chains: map[string]*chainSpec{}, sets: map[string]*setSpec{}}
	}
	for _, name := range desired.sortedSetNames() {
		want := desired.sets[name]
		have, ok := committed.sets[name]
		if ok && have == want {
			continue // shared by compileReusing: unchanged
		}
		if ok && (have.kind != want.kind || have.comment != want.comment) {
			// Same name, other shape: cannot happen with derived names,
			// but if it does, replace the set.
			p.DelSets = append(p.DelSets, name)
			ok = false
		}
		if !ok {
			p.AddSets = append(p.AddSets, name)
			if keys := sortedKeys(want.elems); len(keys) > 0 {
				p.AddElems[name] = keys
			}
			continue
		}
		var add, del []string
		for k, v := range want.elems {
			if hv, ok := have.elems[k]; !ok {
				add = append(add, k)
			} else if hv != v {
				// A verdict map element whose target changed.
				del = append(del, k)
				add = append(add, k)
			}
		}
		for k := range have.elems {
			if _, ok := want.elems[k]; !ok {
				del = append(del, k)
			}
		}
		if len(add) > 0 {
			sort.Strings(add)
			p.AddElems[name] = add
		}
		if len(del) > 0 {
			sort.Strings(del)
			p.DelElems[name] = del
		}
	}
	for _, name := range committed.sortedSetNames() {
		if _, ok := desired.sets[name]; !ok {
			p.DelSets = append(p.DelSets, name)
		}
	}
	for _, name := range desired.sortedChainNames() {
		want := desired.chains[name]
		have, ok := committed.chains[name]
		switch {
		case !ok:
			p.AddChains = append(p.AddChains, name)
		case have.hook != want.hook || have.prio != want.prio:
			// Base chain properties cannot change in place.
			p.Full = true
		case !slices.Equal(have.rules, want.rules) || !slices.Equal(have.policies, want.policies):
			p.RewriteChains = append(p.RewriteChains, name)
		}
	}
	for _, name := range committed.sortedChainNames() {
		if _, ok := desired.chains[name]; !ok {
			p.DelChains = append(p.DelChains, name)
		}
	}
	if p.Full && len(committed.chains) > 0 {
		return Diff(nil, desired)
	}
	return p
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Stats counts the plan's changes against the desired table.
func (p *Plan) Stats(desired *Ruleset) PlanStats {
	s := PlanStats{Full: p.Full, SetsAdded: len(p.AddSets), SetsDeleted: len(p.DelSets),
		ChainsAdded: len(p.AddChains), ChainsRewritten: len(p.RewriteChains), ChainsDeleted: len(p.DelChains)}
	for _, name := range append(append([]string(nil), p.AddChains...), p.RewriteChains...) {
		s.RulesWritten += len(desired.chains[name].rules)
	}
	for _, keys := range p.AddElems {
		s.ElementsAdded += len(keys)
	}
	for _, keys := range p.DelElems {
		s.ElementsDeleted += len(keys)
	}
	return s
}
