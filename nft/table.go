package nft

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/nftpol/nftpol/selectors"
)

// DenyAction is what the isolation chains do with packets no rule allows.
type DenyAction string

// The deny actions.
const (
	DenyDrop   DenyAction = "drop"
	DenyReject DenyAction = "reject"
)

// ParseDenyAction validates a --deny-action value.
func ParseDenyAction(s string) (DenyAction, error) {
	switch DenyAction(s) {
	case DenyDrop, DenyReject:
		return DenyAction(s), nil
	}
	return "", fmt.Errorf("--deny-action must be drop or reject, not %q", s)
}

// Defaults of Config, and of the agent's flags that set it.
const (
	DefaultTable     = "nftpol"
	DefaultDeny      = DenyDrop
	DefaultLogGroup  = 100
	DefaultLogRate   = 10
	maxLogRatePerSec = 1_000_000
)

// Config says which table to program, where, and how. The zero value of a
// field means its default (see WithDefaults).
type Config struct {
	// Table is the name of our inet table.
	Table string
	// NetNSPath programs the network namespace at this path; "" is our own.
	NetNSPath string
	Deny      DenyAction
	// LogDenied sends the denied packets, at most LogRate per second per
	// isolation chain, to NFLOG group LogGroup (see ReadDenied).
	LogDenied bool
	LogGroup  uint16
	LogRate   uint32
	// LookupMinPolicies is how many policies isolating a pod give its
	// isolation chain the lookup layout (lookup.go); 0 is the default
	// (DefaultLookupMinPolicies). 1 puts every chain in that layout.
	LookupMinPolicies int
}

// WithDefaults returns cfg with every unset field at its default, or an
// error when a field is invalid. Compiler and Enforcer both start from it,
// so a table compiled and a table committed always agree.
func (cfg Config) WithDefaults() (Config, error) {
	if cfg.Table == "" {
		cfg.Table = DefaultTable
	}
	if len(cfg.Table) > NameLengthMax {
		return cfg, fmt.Errorf("table name %q is longer than %d bytes", cfg.Table, NameLengthMax)
	}
	if cfg.Deny == "" {
		cfg.Deny = DefaultDeny
	}
	if _, err := ParseDenyAction(string(cfg.Deny)); err != nil {
		return cfg, err
	}
	if cfg.LogRate == 0 {
		cfg.LogRate = DefaultLogRate
	}
	if cfg.LogRate > maxLogRatePerSec {
		return cfg, fmt.Errorf("log rate %d/s is above %d/s", cfg.LogRate, maxLogRatePerSec)
	}
	if cfg.LogGroup == 0 {
		cfg.LogGroup = DefaultLogGroup
	}
	if cfg.LookupMinPolicies < 0 {
		return cfg, fmt.Errorf("lookup threshold %d is negative", cfg.LookupMinPolicies)
	}
	return cfg, nil
}

// Kernel limits that shape what we write. Names and comments beyond them
// are refused by the kernel (names) or the nft tool (comments); a netlink
// attribute longer than its 16-bit length field is silently corrupted.
const (
	// NameLengthMax is NFT_NAME_MAXLEN less the terminating NUL: tables,
	// chains and sets.
	NameLengthMax = 255
	// CommentLengthMax is what `nft` accepts for a comment (NFT_USERDATA_MAXLEN
	// in its parser is 256; it stores at most 128 for rules it writes).
	CommentLengthMax = 128
	// AttrLengthMax is the largest netlink attribute: its length is 16 bits
	// and counts the 4-byte header. google/nftables v0.3.0 puts a whole
	// element list in one nested attribute and does not refuse a longer
	// one: it wraps the length, and the kernel then reads a truncated list
	// or fails the batch.
	AttrLengthMax = 1<<16 - 1
)

// The fixed objects of the table.
const (
	MapIngressV4 = "ingress_v4"
	MapIngressV6 = "ingress_v6"
	MapEgressV4  = "egress_v4"
	MapEgressV6  = "egress_v6"

	ChainForwardEgress  = "forward-egress"
	ChainForwardIngress = "forward-ingress"
	ChainInputEgress    = "input-egress"
)

// Hooks of our base chains.
type hook string

const (
	hookNone    hook = ""
	hookForward hook = "forward"
	hookInput   hook = "input"
)

// baseChain is one base chain of the table: where it hooks and which
// verdict maps it consults. Every base chain is `type filter` with policy
// accept: a pod that no policy isolates must stay open.
type baseChain struct {
	name string
	hook hook
	prio int32
	// dir is the side the chain decides; on saddr for egress, daddr for
	// ingress.
	dir selectors.Direction
	// nd accepts IPv6 neighbour discovery before the maps: it is no
	// connection a policy speaks of, and without it an egress-isolated pod
	// loses IPv6 altogether, replies to allowed connections included.
	nd bool
}

// baseChains is the layout of the hooks (README, "How it works"). Two base
// chains at forward let the egress side accept without skipping the
// ingress side: a packet passes only when both accept. Pod → node traffic
// arrives at input, where only egress applies (the node is no pod).
var baseChains = [...]baseChain{
	{name: ChainForwardEgress, hook: hookForward, prio: 0, dir: selectors.Egress},
	{name: ChainForwardIngress, hook: hookForward, prio: 1, dir: selectors.Ingress},
	{name: ChainInputEgress, hook: hookInput, prio: 0, dir: selectors.Egress, nd: true},
}

// verdictMap names the local-pod verdict map of a direction and family.
func verdictMap(dir selectors.Direction, family int) string {
	switch {
	case dir == selectors.Egress && family == 6:
		return MapEgressV6
	case dir == selectors.Egress:
		return MapEgressV4
	case family == 6:
		return MapIngressV6
	}
	return MapIngressV4
}

// ICMPv6 neighbour discovery message types.
const (
	ndNeighborSolicit = 135
	ndNeighborAdvert  = 136
)

// Derived names are a short hash plus a readable kind, so that `nft list`
// explains itself and the name depends only on the identity the model
// gives (policy keys, set IDs): a restart or another node computes the
// same names for the same things. 16 hex digits (64 bits) make a collision
// among the few thousand objects of a table practically impossible; the
// longest name, "iso-eg-" + 16, is far below NameLengthMax.
func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:8])
}

func dirSuffix(dir selectors.Direction) string {
	if dir == selectors.Egress {
		return "eg"
	}
	return "in"
}

func policyChainName(key string, dir selectors.Direction) string {
	return "pol-" + shortHash(key) + "-" + dirSuffix(dir)
}

func isolationChainName(keys []string, dir selectors.Direction) string {
	return "iso-" + dirSuffix(dir) + "-" + shortHash(strings.Join(keys, "\n"))
}

func addrSetName(id string, family int) string {
	return fmt.Sprintf("a-%s-v%d", shortHash(id), family)
}

func portSetName(id string, family int) string {
	return fmt.Sprintf("p-%s-v%d", shortHash(id), family)
}

// truncateComment keeps a comment within CommentLengthMax, cutting at a
// rune boundary so that what the kernel stores is still valid UTF-8.
func truncateComment(s string) string {
	if len(s) <= CommentLengthMax {
		return s
	}
	cut := CommentLengthMax - len("...")
	for cut > 0 && !utf8RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }

// Ruleset is the content of our table: what the Compiler makes, what
// Diff compares, what the Enforcer commits and what it reads back.
type Ruleset struct {
	Table  string
	chains map[string]*chainSpec
	sets   map[string]*setSpec
}

func newRuleset(table string) *Ruleset {
	return &Ruleset{Table: table, chains: map[string]*chainSpec{}, sets: map[string]*setSpec{}}
}

// chainSpec is one chain: a base chain when hook is set.
type chainSpec struct {
	name string
	// hook, prio, typ and policy describe a base chain as the kernel
	// holds it; a regular chain has none of them. Our base chains are
	// always type filter, policy accept; reading back anything else is
	// drift.
	hook   hook
	prio   int32
	typ    string
	policy string
	rules  []ruleSpec
	// policies and dir say whose counters the chain holds: the policy of
	// a policy chain (its accepts), or the isolating policies of an
	// isolation chain (its denies). They are annotations, not kernel
	// state: verification ignores them.
	policies []string
	dir      selectors.Direction
	isolates bool
	// lookups counts the lookup maps of an isolation chain (lookup.go).
	// Read back, its policies are only those the maps' elements reach:
	// the kernel does not hold the policies no element leads to.
	lookups int
	// tier is set on a ClusterNetworkPolicy chain, whose policies are the
	// CNPs inlined in it in order; next is where its Pass goes. Their
	// counters are per rule, by comment (see counters.go).
	tier selectors.Tier
	next string
	// audit names the policy in audit mode whose hypothesis the chain is
	// (audit.go): its would-deny counters count for that policy.
	audit string
}

// sameKernelChain reports whether two chains are the same in the kernel:
// hook, priority, type, policy and every rule.
func sameKernelChain(a, b *chainSpec) bool {
	return a.hook == b.hook && a.prio == b.prio && a.typ == b.typ && a.policy == b.policy &&
		slices.Equal(a.rules, b.rules)
}

// Counts returns the number of chains, rules, sets and set elements.
func (r *Ruleset) Counts() (chains, rules, sets, elems int) {
	for _, c := range r.chains {
		chains++
		rules += len(c.rules)
	}
	for _, s := range r.sets {
		sets++
		elems += s.elems.len()
	}
	return
}

func (r *Ruleset) sortedChainNames() []string { return slices.Sorted(maps.Keys(r.chains)) }
func (r *Ruleset) sortedSetNames() []string   { return slices.Sorted(maps.Keys(r.sets)) }
