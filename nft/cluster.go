package nft

import (
	"strings"

	"github.com/nftpol/nftpol/selectors"
)

// This file compiles the ClusterNetworkPolicy tiers. A pod's verdict map
// element jumps, per direction, to one chain made for its combination of
// tiers, shared by every local pod with the same combination:
//
//	tie-<dir>-<hash>  when a tier follows Admin: jump to the Admin chain,
//	                  then goto the next tier's chain. Named after both.
//	adm-<dir>-<hash>  its Admin rules inline in evaluation order: Accept
//	                  accepts, Deny logs, counts and drops (or rejects),
//	                  Pass returns to the tie- chain, which goes on to the
//	                  next tier, as the end of the chain does. Named after
//	                  the Admin policies only, so a pod whose next tier
//	                  changes (a NetworkPolicy isolates it, a Baseline
//	                  policy joins) keeps its Admin chain and counters;
//	                  only the small tie- chain is replaced. With no next
//	                  tier the pod goes to an Admin chain of its own form
//	                  (Pass accepts, the end returns to the base chain),
//	                  named after the policies and "then " (as before
//	                  tie- chains existed).
//	iso-<dir>-<hash>  the NetworkPolicy tier, as without CNPs: it ends in
//	                  a deny, so reaching it decides.
//	bl-<dir>-<hash>   its Baseline rules inline (only when no
//	                  NetworkPolicy isolates the pod: the NetworkPolicy tier
//	                  decides otherwise); Pass accepts, the end returns to
//	                  the base chain, whose policy accepts.
//
// The next tier after Admin is the NetworkPolicy tier when one isolates the
// pod, else Baseline, else nothing (Pass and the end accept). A packet
// walks only the rules of the policies that select its pod, and the base
// chains stay as they are: an egress Accept ends forward-egress only, the
// packet still meets forward-ingress.

// Prefixes of the ClusterNetworkPolicy chains and comments.
const (
	adminChainPrefix    = "adm-"
	tieChainPrefix      = "tie-"
	baselineChainPrefix = "bl-"
	// clusterCommentPrefix starts the comment of every CNP rule, which
	// names the policy and rule (selectors.ClusterRule.Label).
	clusterCommentPrefix = "cnp:"
)

type clusterCompiler struct {
	rs       *Ruleset
	cfg      Config
	policies map[string]*selectors.ClusterPolicyRules
	unions   *peerUnions
	// audit, when set, makes the chains of the hypothesis that policy
	// in audit mode is enforced (audit.go): named for it, their denies
	// counted for it and accepted.
	audit string
}

func newClusterCompiler(rs *Ruleset, m *selectors.Model, cfg Config, u *peerUnions) *clusterCompiler {
	cc := &clusterCompiler{rs: rs, cfg: cfg, unions: u, policies: make(map[string]*selectors.ClusterPolicyRules, len(m.ClusterPolicies))}
	for i := range m.ClusterPolicies {
		cc.policies[m.ClusterPolicies[i].Name] = &m.ClusterPolicies[i]
	}
	return cc
}

func clusterChainName(prefix string, dir selectors.Direction, parts ...string) string {
	return prefix + dirSuffix(dir) + "-" + shortHash(strings.Join(parts, "\n"))
}

// podChain returns the chain a pod's element jumps to for dir, given its
// tiers and its NetworkPolicy isolation chain (or ""), adding the tier
// chains it needs; "" when nothing applies.
func (cc *clusterCompiler) podChain(t selectors.ClusterTiers, iso string, dir selectors.Direction) string {
	next := iso
	if next == "" && len(t.Baseline) > 0 {
		next = cc.chainName(clusterChainName(baselineChainPrefix, dir, t.Baseline...))
		if _, ok := cc.rs.chains[next]; !ok {
			cc.rs.chains[next] = cc.tierChain(next, selectors.TierBaseline, t.Baseline, dir, "")
		}
	}
	if len(t.Admin) == 0 {
		return next
	}
	if next == "" {
		name := cc.chainName(clusterChainName(adminChainPrefix, dir, append(append([]string{}, t.Admin...), "then ")...))
		if _, ok := cc.rs.chains[name]; !ok {
			cc.rs.chains[name] = cc.tierChain(name, selectors.TierAdmin, t.Admin, dir, "")
		}
		return name
	}
	admin := cc.chainName(clusterChainName(adminChainPrefix, dir, t.Admin...))
	if _, ok := cc.rs.chains[admin]; !ok {
		cc.rs.chains[admin] = cc.tierChain(admin, selectors.TierAdmin, t.Admin, dir, next)
	}
	tie := cc.chainName(clusterChainName(tieChainPrefix, dir, admin, next))
	if _, ok := cc.rs.chains[tie]; !ok {
		cc.rs.chains[tie] = &chainSpec{name: tie, dir: dir, next: next, rules: []ruleSpec{
			{verdict: verdictJump, target: admin},
			{verdict: verdictGoto, target: next},
		}}
	}
	return tie
}

// tierChain compiles the rules of policies (in evaluation order) of one
// tier; next, when not "", is the tier after Admin: Pass returns to the
// tie- chain that goes there.
func (cc *clusterCompiler) tierChain(name string, tier selectors.Tier, policies []string, dir selectors.Direction, next string) *chainSpec {
	c := &chainSpec{name: name, policies: policies, dir: dir, tier: tier}
	for _, pname := range policies {
		p := cc.policies[pname]
		if p == nil {
			continue // not from BuildModel; a policy without rules matches nothing
		}
		for _, r := range p.Rules(dir) {
			comment := truncateComment(clusterCommentPrefix + r.Label(p.Name, dir))
			for _, m := range ruleMatches(cc.unions, dir, r.Peers, r.Ports) {
				c.rules = append(c.rules, cc.actionRules(m, r.Action, tier, dir, next, comment)...)
			}
		}
	}
	if cc.audit != "" {
		c.audit = cc.audit
		quiet(c)
	}
	return c
}

// actionRules completes the matches m with the action's verdict. Every
// rule carries a counter and the policy rule's comment, which is how the
// counters are told apart (see counters.go).
func (cc *clusterCompiler) actionRules(m ruleSpec, a selectors.Action, tier selectors.Tier, dir selectors.Direction, next, comment string) []ruleSpec {
	m.counter, m.comment = true, comment
	switch a {
	case selectors.ActionAccept:
		m.verdict = verdictAccept
		return []ruleSpec{m}
	case selectors.ActionPass:
		if tier == selectors.TierAdmin && next != "" {
			m.verdict = verdictReturn
		} else {
			m.verdict = verdictAccept // Pass from the last tier: the default allows
		}
		return []ruleSpec{m}
	}
	if cc.audit != "" {
		return cc.wouldDeny(m, dir)
	}
	var out []ruleSpec
	if cc.cfg.LogDenied {
		l := m
		l.counter, l.comment = false, ""
		l.limitRate, l.logGroup, l.logPrefix = cc.cfg.LogRate, cc.cfg.LogGroup, clusterLogPrefix(dir, comment)
		out = append(out, l)
	}
	if cc.cfg.Deny != DenyReject {
		m.verdict = verdictDrop
		return append(out, m)
	}
	// Reject as the NetworkPolicy deny does: a TCP reset for TCP, ICMP
	// admin-prohibited for everything else. A named-port match holds the
	// protocol in its set, and a TCP match cannot stand before it in a
	// form the nft tool reads back alike: such a deny rejects with ICMP
	// whatever the protocol.
	if m.portSet == "" && (m.l4proto == 0 || m.l4proto == selectors.ProtocolTCP) {
		t := m
		t.l4proto, t.verdict = selectors.ProtocolTCP, verdictRejectTCP
		out = append(out, t)
	}
	if m.l4proto != selectors.ProtocolTCP {
		m.verdict = verdictRejectICMPX
		out = append(out, m)
	}
	return out
}

// clusterLogPrefix is the NFLOG prefix of a CNP deny: the direction's
// deny prefix, a space, and the rule's label. NFLOG carries at most 127
// bytes of prefix: a longer label is cut (ReadDenied reports what came).
func clusterLogPrefix(dir selectors.Direction, comment string) string {
	return joinLogPrefix(logPrefix(dir), strings.TrimPrefix(comment, clusterCommentPrefix))
}

// joinLogPrefix is an NFLOG prefix: base, a space, and label, cut to what
// NFLOG carries.
func joinLogPrefix(base, label string) string {
	s := base + " " + label
	const max = 127
	if len(s) > max {
		cut := max
		for cut > 0 && !utf8RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}
