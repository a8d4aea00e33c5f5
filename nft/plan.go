package nft

import (
	"fmt"
	"slices"
	"strings"

	"github.com/google/nftables"
)

// Plan is the difference between the committed table and the desired one:
// exactly what one transaction does. Names are sorted so that a plan is
// deterministic; String shows it in nft syntax.
type Plan struct {
	// Full replaces the whole table (first commit, after a failed commit or
	// drift, or when an object cannot change in place): delete and
	// re-create it in the same transaction.
	Full bool

	AddSets, DelSets []string
	// AddChains are new chains (their rules are written too); RewriteChains
	// exist already and get flushed and rewritten; DelChains go.
	AddChains, RewriteChains, DelChains []string
	// AddElems and DelElems are element keys per set.
	AddElems, DelElems map[string][]string

	from, to *Ruleset
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
// An object whose kind changes under the same name cannot change in
// place while rules refer to it, so that also replaces the table whole:
// a delete of a set in use would fail the transaction.
func Diff(committed, desired *Ruleset) *Plan {
	if committed == nil {
		return fullPlan(desired)
	}
	p := &Plan{AddElems: map[string][]string{}, DelElems: map[string][]string{}, from: committed, to: desired}
	// The maps are walked in any order and only the names that change are
	// sorted: a pod change touches a handful of the table's objects.
	for name, want := range desired.sets {
		have, ok := committed.sets[name]
		switch {
		case !ok:
			p.AddSets = append(p.AddSets, name)
			if want.elems.len() > 0 {
				p.AddElems[name] = want.sortedKeys()
			}
			continue
		case have == want:
			continue // shared by the Compiler: unchanged
		case have.kind != want.kind || have.comment != want.comment:
			return fullPlan(desired)
		case want.base != nil && want.base == have.serial:
			// Made from have by the Compiler: the change is known.
			if len(want.added) > 0 {
				p.AddElems[name] = want.added
			}
			if len(want.removed) > 0 {
				p.DelElems[name] = want.removed
			}
			continue
		}
		var add, del []string
		for k, v := range want.elems.all() {
			if hv, ok := have.elems.lookup(k); !ok {
				add = append(add, k)
			} else if hv != v {
				// A verdict map element whose target changed.
				del = append(del, k)
				add = append(add, k)
			}
		}
		for k := range have.elems.all() {
			if _, ok := want.elems.lookup(k); !ok {
				del = append(del, k)
			}
		}
		if len(add) > 0 {
			slices.Sort(add)
			p.AddElems[name] = add
		}
		if len(del) > 0 {
			slices.Sort(del)
			p.DelElems[name] = del
		}
	}
	for name := range committed.sets {
		if _, ok := desired.sets[name]; !ok {
			p.DelSets = append(p.DelSets, name)
			if have := committed.sets[name]; have.kind.vmap() && have.elems.len() > 0 {
				// Its elements jump to chains this plan may delete: they
				// go first, as a kept map's do (the audit maps come and
				// go, audit.go).
				p.DelElems[name] = have.sortedKeys()
			}
		}
	}
	for name, want := range desired.chains {
		have, ok := committed.chains[name]
		switch {
		case !ok:
			p.AddChains = append(p.AddChains, name)
		case have == want:
			// shared by the Compiler: unchanged
		case have.hook != want.hook || have.prio != want.prio || have.typ != want.typ || have.policy != want.policy:
			return fullPlan(desired)
		case !slices.Equal(have.rules, want.rules):
			p.RewriteChains = append(p.RewriteChains, name)
		}
	}
	for name := range committed.chains {
		if _, ok := desired.chains[name]; !ok {
			p.DelChains = append(p.DelChains, name)
		}
	}
	for _, names := range [][]string{p.AddSets, p.DelSets, p.AddChains, p.RewriteChains, p.DelChains} {
		slices.Sort(names)
	}
	return p
}

func fullPlan(desired *Ruleset) *Plan {
	p := &Plan{Full: true, AddElems: map[string][]string{}, DelElems: map[string][]string{}, to: desired,
		AddSets: desired.sortedSetNames(), AddChains: desired.sortedChainNames()}
	for _, name := range p.AddSets {
		if s := desired.sets[name]; s.elems.len() > 0 {
			p.AddElems[name] = s.sortedKeys()
		}
	}
	return p
}

// Stats counts the plan's changes.
func (p *Plan) Stats(desired *Ruleset) PlanStats {
	s := PlanStats{Full: p.Full, SetsAdded: len(p.AddSets), SetsDeleted: len(p.DelSets),
		ChainsAdded: len(p.AddChains), ChainsRewritten: len(p.RewriteChains), ChainsDeleted: len(p.DelChains)}
	for _, name := range p.AddChains {
		s.RulesWritten += len(desired.chains[name].rules)
	}
	for _, name := range p.RewriteChains {
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

// stepVerb is one kind of operation of a transaction.
type stepVerb uint8

const (
	stepReplaceTable stepVerb = iota // create (no-op if present), delete, create
	stepAddSet
	stepDelSet
	stepAddChain
	stepFlushChain
	stepDelChain
	stepAddRules // every rule of the chain, in order
	stepAddElems
	stepDelElems
)

// step is one operation on one object; keys are element keys.
type step struct {
	verb  stepVerb
	set   *setSpec
	chain *chainSpec
	keys  []string
}

// steps orders the plan as the kernel accepts it inside one transaction:
// objects exist before rules and elements refer to them, and references
// are gone before what they refer to is deleted. Commit and String both
// walk this one list, so the text is the transaction.
func (p *Plan) steps() []step {
	var out []step
	if p.Full {
		out = append(out, step{verb: stepReplaceTable})
	}
	for _, name := range sortedMapKeys(p.DelElems) {
		out = append(out, step{verb: stepDelElems, set: p.from.sets[name], keys: p.DelElems[name]})
	}
	// Chains before sets: nft 1.0.6 refuses, in one transaction, an
	// element of a new interval map (lookup.go) that jumps to a chain
	// added after the map (ENOENT), and a chain refers to nothing.
	for _, name := range p.AddChains {
		out = append(out, step{verb: stepAddChain, chain: p.to.chains[name]})
	}
	for _, name := range p.AddSets {
		out = append(out, step{verb: stepAddSet, set: p.to.sets[name]})
	}
	addElems := func(vmaps bool) {
		for _, name := range sortedMapKeys(p.AddElems) {
			if s := p.to.sets[name]; s.kind.vmap() == vmaps {
				out = append(out, step{verb: stepAddElems, set: s, keys: p.AddElems[name]})
			}
		}
	}
	addElems(false)
	for _, name := range p.RewriteChains {
		out = append(out, step{verb: stepFlushChain, chain: p.to.chains[name]})
	}
	for _, name := range p.AddChains {
		if c := p.to.chains[name]; len(c.rules) > 0 {
			out = append(out, step{verb: stepAddRules, chain: c})
		}
	}
	for _, name := range p.RewriteChains {
		out = append(out, step{verb: stepAddRules, chain: p.to.chains[name]})
	}
	// Verdict maps last: the chains they jump to exist with their rules.
	addElems(true)
	for _, name := range p.DelChains {
		out = append(out, step{verb: stepFlushChain, chain: p.from.chains[name]})
	}
	// Sets before chains: the elements of a lookup map (lookup.go) jump
	// to policy chains, which cannot go while a map refers to them; the
	// flushes above removed every rule that refers to a set that goes.
	for _, name := range p.DelSets {
		out = append(out, step{verb: stepDelSet, set: p.from.sets[name]})
	}
	for _, name := range p.DelChains {
		out = append(out, step{verb: stepDelChain, chain: p.from.chains[name]})
	}
	return out
}

func sortedMapKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// queue puts the plan's steps on c as netlink messages of one batch.
func (p *Plan) queue(c *nftables.Conn, table *nftables.Table) error {
	sets := map[string]*nftables.Set{}
	setIDs := map[string]uint32{}
	setRef := func(s *setSpec) *nftables.Set {
		if ks, ok := sets[s.name]; ok {
			return ks
		}
		ks := &nftables.Set{Table: table, Name: s.name}
		s.kind.apply(ks)
		sets[s.name] = ks
		return ks
	}
	for _, st := range p.steps() {
		switch st.verb {
		case stepReplaceTable:
			// The old table and everything in it go in the same transaction
			// that brings the new one: no packet ever sees an empty table.
			c.AddTable(table)
			c.DelTable(table)
			c.AddTable(table)
		case stepAddSet:
			ks := &nftables.Set{Table: table, Name: st.set.name, Comment: st.set.comment}
			st.set.kind.apply(ks)
			if err := c.AddSet(ks, nil); err != nil {
				return fmt.Errorf("adding set %s: %w", st.set.name, err)
			}
			sets[st.set.name] = ks
			setIDs[st.set.name] = ks.ID
		case stepDelSet:
			c.DelSet(&nftables.Set{Table: table, Name: st.set.name})
		case stepAddChain:
			c.AddChain(toKernelChain(table, st.chain))
		case stepFlushChain:
			c.FlushChain(&nftables.Chain{Table: table, Name: st.chain.name})
		case stepDelChain:
			c.DelChain(&nftables.Chain{Table: table, Name: st.chain.name})
		case stepAddRules:
			ch := &nftables.Chain{Table: table, Name: st.chain.name}
			for i := range st.chain.rules {
				r := &st.chain.rules[i]
				rule := &nftables.Rule{Table: table, Chain: ch, Exprs: r.exprs(setIDs)}
				if r.comment != "" {
					rule.UserData = commentUserData(r.comment)
				}
				c.AddRule(rule)
			}
		case stepAddElems, stepDelElems:
			if err := queueElements(c, setRef(st.set), st.set, st.keys, st.verb == stepAddElems); err != nil {
				return err
			}
		}
	}
	return nil
}

// toKernelChain is a chain as google/nftables takes it; chainFromKernel is
// its inverse.
func toKernelChain(table *nftables.Table, spec *chainSpec) *nftables.Chain {
	ch := &nftables.Chain{Table: table, Name: spec.name}
	if spec.hook == hookNone {
		return ch
	}
	policy := nftables.ChainPolicyAccept
	ch.Type = nftables.ChainType(spec.typ)
	ch.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(spec.prio))
	ch.Policy = &policy
	ch.Hooknum = nftables.ChainHookForward
	if spec.hook == hookInput {
		ch.Hooknum = nftables.ChainHookInput
	}
	return ch
}

// queueElements queues element adds or deletes, as many messages as it
// takes to keep each element list within one netlink attribute.
func queueElements(c *nftables.Conn, ks *nftables.Set, spec *setSpec, keys []string, add bool) error {
	err := elementLists(spec, keys, elemListMax, func(list []nftables.SetElement) error {
		if add {
			return c.SetAddElements(ks, list)
		}
		return c.SetDeleteElements(ks, list)
	})
	if err != nil {
		return fmt.Errorf("queuing elements of set %s: %w", spec.name, err)
	}
	return nil
}

// String is the plan in nft syntax: the commands `nft -f` would run for
// the same transaction, in the same order.
func (p *Plan) String() string {
	var b strings.Builder
	table := p.to.Table
	for _, st := range p.steps() {
		switch st.verb {
		case stepReplaceTable:
			fmt.Fprintf(&b, "add table inet %s\ndelete table inet %s\nadd table inet %s\n", table, table, table)
		case stepAddSet:
			fmt.Fprintf(&b, "add %s inet %s %s { %s", setKeyword(st.set.kind), table, st.set.name, st.set.kind)
			if st.set.comment != "" {
				fmt.Fprintf(&b, " comment %s;", quoteNft(st.set.comment))
			}
			b.WriteString(" }\n")
		case stepDelSet:
			fmt.Fprintf(&b, "delete %s inet %s %s\n", setKeyword(st.set.kind), table, st.set.name)
		case stepAddChain:
			fmt.Fprintf(&b, "add chain inet %s %s", table, st.chain.name)
			if st.chain.hook != hookNone {
				fmt.Fprintf(&b, " { %s }", baseChainText(st.chain))
			}
			b.WriteString("\n")
		case stepFlushChain:
			fmt.Fprintf(&b, "flush chain inet %s %s\n", table, st.chain.name)
		case stepDelChain:
			fmt.Fprintf(&b, "delete chain inet %s %s\n", table, st.chain.name)
		case stepAddRules:
			for i := range st.chain.rules {
				fmt.Fprintf(&b, "add rule inet %s %s %s\n", table, st.chain.name, st.chain.rules[i].String())
			}
		case stepAddElems, stepDelElems:
			verb := "add"
			if st.verb == stepDelElems {
				verb = "delete"
			}
			texts := make([]string, len(st.keys))
			for i, k := range st.keys {
				value := st.set.elems.get(k)
				if st.verb == stepDelElems {
					value = "" // a delete names keys only
				}
				texts[i] = elementText(st.set.kind, k, value)
			}
			fmt.Fprintf(&b, "%s element inet %s %s { %s }\n", verb, table, st.set.name, strings.Join(texts, ", "))
		}
	}
	return b.String()
}
