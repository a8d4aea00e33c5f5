package nft

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/google/nftables/userdata"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/selectors"
)

// PolicyCounter is what one policy let through and turned away in one
// direction, from the kernel's rule counters. A packet denied at a pod that
// several policies isolate counts as denied for each of them.
type PolicyCounter struct {
	Policy                       string
	Direction                    selectors.Direction
	AllowedPackets, AllowedBytes uint64
	DeniedPackets, DeniedBytes   uint64
	// Audited is set for a policy in audit mode: WouldDeny counts the
	// packets it would have denied (audit.go).
	Audited                          bool
	WouldDenyPackets, WouldDenyBytes uint64
}

// Counters returns, per policy and direction, what the policy's rules
// let through and what the isolation chains it takes part in turned away.
// The figures never decrease while the agent runs, as Prometheus counters
// must: the kernel's rule counters restart from zero when a chain is
// rewritten or deleted, so the last figures read of such a chain are
// carried into a base that only grows. (Packets counted between the last
// read and the rewrite are not seen; a scrape interval bounds them.)
func (e *Enforcer) Counters() ([]PolicyCounter, error) {
	e.mu.Lock()
	committed := e.committed
	e.mu.Unlock()
	if committed == nil {
		return nil, nil
	}
	perChain, err := e.chainCounters()
	if err != nil {
		return nil, err
	}
	e.counters.mu.Lock()
	defer e.counters.mu.Unlock()
	return e.counters.update(committed, perChain), nil
}

// counterState makes the kernel's per-chain counters monotonic per policy.
type counterState struct {
	mu sync.Mutex
	// last is what each chain counted at the previous read, with whom
	// those counts belong to.
	last map[string]chainCount
	// reset names the chains a commit rewrote or deleted since the
	// previous read: their kernel counters started again from zero.
	reset map[string]bool
	// base holds the counts of chains that no longer count.
	base map[policyDir]*PolicyCounter
}

type policyDir struct {
	policy string
	dir    selectors.Direction
}

type chainCount struct {
	counterSum
	policies []string
	dir      selectors.Direction
	isolates bool
	audit    bool // a would-deny counter
}

func (c chainCount) addTo(sums map[policyDir]*PolicyCounter) {
	for _, p := range c.policies {
		k := policyDir{p, c.dir}
		pc := sums[k]
		if pc == nil {
			pc = &PolicyCounter{Policy: p, Direction: c.dir}
			sums[k] = pc
		}
		switch {
		case c.audit:
			pc.Audited = true
			pc.WouldDenyPackets += c.packets
			pc.WouldDenyBytes += c.bytes
		case c.isolates:
			pc.DeniedPackets += c.packets
			pc.DeniedBytes += c.bytes
		default:
			pc.AllowedPackets += c.packets
			pc.AllowedBytes += c.bytes
		}
	}
}

// chainsRewritten records, under the commit's lock, the chains whose
// kernel counters a commit restarts.
func (cs *counterState) chainsRewritten(p *Plan) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.reset == nil {
		cs.reset = map[string]bool{}
	}
	if p.Full {
		for name := range cs.last {
			cs.reset[name] = true
		}
		return
	}
	for _, name := range p.RewriteChains {
		cs.reset[name] = true
	}
	for _, name := range p.DelChains {
		cs.reset[name] = true
	}
}

func (cs *counterState) update(committed *Ruleset, perChain map[string]counterSum) []PolicyCounter {
	if cs.base == nil {
		cs.base = map[policyDir]*PolicyCounter{}
	}
	now := make(map[string]chainCount, len(perChain))
	for name, sum := range perChain {
		chain, comment, perRule := strings.Cut(name, ruleUnitSep)
		spec := committed.chains[chain]
		if perRule && spec != nil && spec.audit != "" && strings.HasPrefix(comment, auditCommentPrefix) {
			now[name] = chainCount{counterSum: sum, policies: []string{spec.audit}, dir: spec.dir, audit: true}
			continue
		}
		if perRule {
			if spec == nil || spec.tier == 0 {
				continue
			}
			// The rule's label names the policy and rule; its verdict
			// says whether it denies.
			now[name] = chainCount{counterSum: sum, policies: []string{strings.TrimPrefix(comment, clusterCommentPrefix)},
				dir: spec.dir, isolates: spec.deniesByComment(comment)}
			continue
		}
		if spec == nil || len(spec.policies) == 0 || spec.tier != 0 {
			continue
		}
		now[name] = chainCount{counterSum: sum, policies: spec.policies, dir: spec.dir, isolates: spec.isolates}
	}
	for name, prev := range cs.last {
		cur, still := now[name]
		chain, _, _ := strings.Cut(name, ruleUnitSep)
		if !still || cs.reset[chain] || cur.packets < prev.packets || cur.bytes < prev.bytes {
			prev.addTo(cs.base)
		}
	}
	cs.last, cs.reset = now, nil
	sums := make(map[policyDir]*PolicyCounter, len(cs.base))
	for k, pc := range cs.base {
		c := *pc
		sums[k] = &c
	}
	for _, c := range now {
		c.addTo(sums)
	}
	out := make([]PolicyCounter, 0, len(sums))
	for _, pc := range sums {
		out = append(out, *pc)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Policy != out[j].Policy {
			return out[i].Policy < out[j].Policy
		}
		return out[i].Direction < out[j].Direction
	})
	return out
}

type counterSum struct{ packets, bytes uint64 }

// deniesByComment reports whether the rules with comment in c drop or
// reject.
func (c *chainSpec) deniesByComment(comment string) bool {
	for i := range c.rules {
		r := &c.rules[i]
		if r.comment == comment {
			switch r.verdict {
			case verdictDrop, verdictRejectTCP, verdictRejectICMPX:
				return true
			}
			return false
		}
	}
	return false
}

// chainCounters sums the counter expressions of every rule in our table,
// by chain, with one netlink dump. google/nftables only dumps the rules of
// one chain per request, and a request per policy chain made a metrics
// scrape cost as much CPU as the syncs it ran next to (10k pods: ~400
// chains per scrape). It reads only the counters, not whole rules.
func (e *Enforcer) chainCounters() (map[string]counterSum, error) {
	msgs, err := e.dumpTable(unix.NFT_MSG_GETRULE, unix.NFTA_RULE_TABLE)
	if errors.Is(err, ErrNoTable) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := map[string]counterSum{}
	for _, m := range msgs {
		chain, comment, ctr, err := decodeRuleCounters(m.Data)
		if err != nil {
			return nil, fmt.Errorf("decoding a rule of table %s: %w", e.table.Name, err)
		}
		if strings.HasPrefix(comment, clusterCommentPrefix) || strings.HasPrefix(comment, auditCommentPrefix) {
			// ClusterNetworkPolicy rules and would-deny counters count
			// one by one.
			chain += ruleUnitSep + comment
		}
		sum := out[chain]
		sum.packets += ctr.packets
		sum.bytes += ctr.bytes
		out[chain] = sum
	}
	return out, nil
}

// ruleUnitSep joins a chain name and a rule comment into the key of a
// counter of its own: a byte no chain name holds.
const ruleUnitSep = "\x00"

// decodeRuleCounters returns the chain and comment of one NFT_MSG_NEWRULE
// message and the sum of its counter expressions.
func decodeRuleCounters(data []byte) (string, string, counterSum, error) {
	var chain, comment string
	var sum counterSum
	if len(data) < 4 {
		return "", "", sum, errors.New("message shorter than its nfgenmsg header")
	}
	ad, err := netlink.NewAttributeDecoder(data[4:])
	if err != nil {
		return "", "", sum, err
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		switch ad.Type() {
		case unix.NFTA_RULE_CHAIN:
			chain = ad.String()
		case unix.NFTA_RULE_USERDATA:
			if c, ok := userdata.GetString(ad.Bytes(), userdata.TypeComment); ok {
				comment = c
			}
		case unix.NFTA_RULE_EXPRESSIONS:
			ad.Nested(func(list *netlink.AttributeDecoder) error {
				for list.Next() {
					if list.Type() != unix.NFTA_LIST_ELEM {
						continue
					}
					list.Nested(func(ex *netlink.AttributeDecoder) error {
						return addCounter(ex, &sum)
					})
				}
				return nil
			})
		}
	}
	if err := ad.Err(); err != nil {
		return "", "", sum, err
	}
	return chain, comment, sum, nil
}

// addCounter adds one expression's counts to sum if it is a counter.
func addCounter(ex *netlink.AttributeDecoder, sum *counterSum) error {
	name, data, err := exprAttrs(ex)
	if err != nil {
		return err
	}
	if name != "counter" || data == nil {
		return nil
	}
	cd, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return fmt.Errorf("counter expression: %w", err)
	}
	cd.ByteOrder = binary.BigEndian
	for cd.Next() {
		switch cd.Type() {
		case unix.NFTA_COUNTER_BYTES:
			sum.bytes += cd.Uint64()
		case unix.NFTA_COUNTER_PACKETS:
			sum.packets += cd.Uint64()
		}
	}
	return cd.Err()
}
