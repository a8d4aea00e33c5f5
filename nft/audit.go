package nft

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nftpol/nftpol/selectors"
)

// This file compiles the policies in audit mode (selectors.ModeAnnotation).
//
// A policy P in audit mode decides nothing: the model leaves it out of every
// pod's isolation and tiers, so the chains above enforce what they would
// without it. What P would deny is counted behind them, on the packets
// they let through:
//
//	audit<k>-forward-egress,   base chains at priorities after ours
//	audit<k>-forward-ingress,  (auditPrio); an accept in one base chain
//	audit<k>-input-egress      does not skip the next, and a packet our
//	                           chains dropped never reaches them.
//	audit<k>_<dir>_v<family>   their verdict maps: a local pod's address
//	                           jumps to the hypothesis of its k-th policy
//	                           in audit mode for that direction
//	                           (PodRules.Audit[dir][k]).
//	aud-{iso,adm,bl}-<hash>    the hypothesis: the pod's chains as the
//	                           compiler makes them with P enforced (the
//	                           same code: isolationChain, clusterCompiler),
//	                           named for P, where every deny is instead a
//	                           log (`would-deny`, with --log-denied), a
//	                           counter commented "audit:P dir", then accept.
//	aud-pol-<hash>-<dir>       a NetworkPolicy's allow rules without
//	                           counters: the hypotheses jump there so that
//	                           the policy's own counters count real
//	                           packets only.
//
// A packet is would-deny for P at this node when the chains of this node
// with every audit policy left out allow it (it reached the audit chains)
// and the hypothesis with P enforced (the other audit policies still left
// out) denies it. Each side (egress of a local source, ingress of a local
// destination) is counted where it is decided, so a packet both sides of
// P would deny counts once per side; an egress counted on the source's
// node cannot know what the destination's node decides.

// Names and numbers of the audit part of the table.
const (
	auditCommentPrefix = "audit:"
	auditChainPrefix   = "aud-"
	// auditPrio is the priority of the first audit base chain: after
	// every base chain of baseChains.
	auditPrio = 10

	// logPrefixWouldDeny, then the direction, starts the NFLOG prefix of
	// a would-deny; the policy follows after a space.
	logPrefixWouldDeny = "nftpol-would-deny-"
)

func wouldDenyLogPrefix(dir selectors.Direction) string { return logPrefixWouldDeny + dir.String() }

// wouldDenyDirection reads the direction of a would-deny log prefix.
func wouldDenyDirection(prefix string) (selectors.Direction, bool) {
	for _, dir := range selectors.Directions {
		if prefix == wouldDenyLogPrefix(dir) {
			return dir, true
		}
	}
	return 0, false
}

// auditMap names the verdict map of the slot-th audit policies of local
// pods for dir and family.
func auditMap(slot int, dir selectors.Direction, family int) string {
	return fmt.Sprintf("audit%d_%s", slot, verdictMap(dir, family))
}

func auditBaseChainName(slot int, bc baseChain) string {
	return fmt.Sprintf("audit%d-%s", slot, bc.name)
}

// auditComment is the comment of a would-deny counter: how counters.go
// tells it from the others.
func auditComment(policy string, dir selectors.Direction) string {
	return truncateComment(auditCommentPrefix + policy + " " + dir.String())
}

// compileAudit adds the audit base chains, maps and hypotheses of m's
// policies in audit mode. A model without any adds nothing.
func compileAudit(rs *Ruleset, m *selectors.Model, cfg Config, u *peerUnions) {
	slots := 0
	for i := range m.Pods {
		for _, dir := range selectors.Directions {
			slots = max(slots, len(m.Pods[i].Audit[dir]))
		}
	}
	if slots == 0 {
		return
	}
	for k := range slots {
		for _, dir := range selectors.Directions {
			for _, family := range []int{4, 6} {
				addVerdictMap(rs, auditMap(k, dir, family),
					fmt.Sprintf("local pods with policy %d in audit mode for %s (IPv%d): what it would deny", k+1, dir, family), family)
			}
		}
		for _, bc := range baseChains {
			name := auditBaseChainName(k, bc)
			rs.chains[name] = baseChainSpec(name, bc, auditPrio+2*int32(k)+bc.prio,
				func(dir selectors.Direction, family int) string { return auditMap(k, dir, family) }, nil)
		}
	}
	a := &auditCompiler{rs: rs, cfg: cfg, unions: u, model: m,
		policies: make(map[string]*selectors.PolicyRules, len(m.Policies)),
		cluster:  make(map[string]*selectors.ClusterPolicyRules, len(m.ClusterPolicies))}
	for i := range m.Policies {
		a.policies[m.Policies[i].Key] = &m.Policies[i]
	}
	for i := range m.ClusterPolicies {
		a.cluster[m.ClusterPolicies[i].Name] = &m.ClusterPolicies[i]
	}
	for i := range m.Pods {
		pod := &m.Pods[i]
		for _, dir := range selectors.Directions {
			for k, p := range pod.Audit[dir] {
				target := a.hypothesis(pod, dir, p)
				if target == "" {
					continue
				}
				for _, ip := range pod.IPs {
					rs.sets[auditMap(k, dir, familyOf(ip))].elems.put(addrKey(ip), target)
				}
			}
		}
	}
}

type auditCompiler struct {
	rs       *Ruleset
	cfg      Config
	unions   *peerUnions
	model    *selectors.Model
	policies map[string]*selectors.PolicyRules
	cluster  map[string]*selectors.ClusterPolicyRules
}

// hypothesis returns the chain that decides pod's dir with policy p
// enforced and counts what it denies for p, adding the chains it needs;
// "" when the model does not hold p.
func (a *auditCompiler) hypothesis(pod *selectors.PodRules, dir selectors.Direction, p string) string {
	keys, tiers := pod.Isolating(dir), pod.Cluster[dir]
	if np := a.policies[p]; np != nil && np.Audit {
		keys = slices.Sorted(slices.Values(append(slices.Clone(keys), p)))
	} else if cp := a.cluster[p]; cp != nil && cp.Audit {
		tiers = a.withClusterPolicy(tiers, cp)
	} else {
		return ""
	}
	cc := newClusterCompiler(a.rs, a.model, a.cfg, a.unions)
	cc.audit = p
	var iso string
	if len(keys) > 0 {
		iso = cc.chainName(isolationChainName(keys, dir))
		if _, ok := a.rs.chains[iso]; !ok {
			c := isolationChain(iso, keys, dir, a.quietPolicyChain, cc.wouldDeny(ruleSpec{}, dir))
			c.audit = p
			a.rs.chains[iso] = c
		}
	}
	return cc.podChain(tiers, iso, dir)
}

// withClusterPolicy returns t with cp in its tier, in evaluation order.
func (a *auditCompiler) withClusterPolicy(t selectors.ClusterTiers, cp *selectors.ClusterPolicyRules) selectors.ClusterTiers {
	insert := func(names []string) []string {
		i := 0
		for i < len(names) {
			q := a.cluster[names[i]]
			if q != nil && selectors.ClusterPolicyBefore(cp.Priority, cp.Name, q.Priority, q.Name) {
				break
			}
			i++
		}
		return slices.Insert(slices.Clone(names), i, cp.Name)
	}
	if cp.Tier == selectors.TierAdmin {
		t.Admin = insert(t.Admin)
	} else {
		t.Baseline = insert(t.Baseline)
	}
	return t
}

// quietPolicyChain returns the chain of key's allow rules for dir without
// counters, adding it: a hypothesis must not count real allows again.
func (a *auditCompiler) quietPolicyChain(key string, dir selectors.Direction) string {
	name := auditChainPrefix + policyChainName(key, dir)
	if _, ok := a.rs.chains[name]; ok {
		return name
	}
	c := &chainSpec{name: name, dir: dir}
	if p := a.policies[key]; p != nil {
		c.rules = policyRules(a.unions, p, dir)
	}
	quiet(c)
	a.rs.chains[name] = c
	return name
}

// quiet takes the counters off every rule of c but the would-deny ones,
// and the annotations that would count them for a policy's real traffic.
func quiet(c *chainSpec) {
	for i := range c.rules {
		if !strings.HasPrefix(c.rules[i].comment, auditCommentPrefix) {
			c.rules[i].counter = false
		}
	}
	c.policies, c.isolates, c.tier = nil, false, 0
}

// chainName is name for the clusterCompiler's own chains, and a name of
// the hypothesis of cc.audit for a compiler in audit mode.
func (cc *clusterCompiler) chainName(name string) string {
	if cc.audit == "" {
		return name
	}
	prefix, _, _ := strings.Cut(name, "-")
	return auditChainPrefix + prefix + "-" + shortHash(cc.audit+"\n"+name)
}

// wouldDeny is what a hypothesis does where the chains deny: the matches m
// logged as would-deny (with --log-denied), counted for cc.audit, then
// accepted. The real chains decided already; this only counts.
func (cc *clusterCompiler) wouldDeny(m ruleSpec, dir selectors.Direction) []ruleSpec {
	m.verdict, m.target, m.counter, m.comment = verdictNone, "", false, ""
	var out []ruleSpec
	if cc.cfg.LogDenied {
		l := m
		l.limitRate, l.logGroup, l.logPrefix = cc.cfg.LogRate, cc.cfg.LogGroup, joinLogPrefix(wouldDenyLogPrefix(dir), cc.audit)
		out = append(out, l)
	}
	m.counter, m.comment, m.verdict = true, auditComment(cc.audit, dir), verdictAccept
	return append(out, m)
}

// annotateAuditChains recovers, for a table read from the kernel, which
// chains are audit hypotheses and for which policy (from the would-deny
// counters' comments), and keeps the counter-less copies of policy
// chains from passing for the policies' own.
func annotateAuditChains(rs *Ruleset) {
	for _, c := range rs.chains {
		if !strings.HasPrefix(c.name, auditChainPrefix) {
			continue
		}
		c.policies, c.isolates, c.tier, c.next = nil, false, 0, ""
		for _, r := range c.rules {
			label, ok := strings.CutPrefix(r.comment, auditCommentPrefix)
			if i := strings.LastIndexByte(label, ' '); ok && i > 0 {
				c.audit = label[:i]
				c.dir = selectors.Ingress
				if label[i+1:] == selectors.Egress.String() {
					c.dir = selectors.Egress
				}
				break
			}
		}
	}
}
