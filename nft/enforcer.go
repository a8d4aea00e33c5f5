package nft

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/selectors"
)

// ErrDrift is wrapped by Verify when the kernel's table differs from what
// was committed.
var ErrDrift = errors.New("table differs from the committed ruleset")

// elemChunk bounds the elements per add/delete call: google/nftables v0.3.0
// silently truncates lists of more than 4096 elements in one message.
const elemChunk = 1024

// socketBuffer is the netlink socket buffer size: large batches (10k
// chains, 100k elements) overflow the default ~208 KiB.
const socketBuffer = 64 << 20

// SyncStats tells what one Sync did.
type SyncStats struct {
	PlanStats
	// Chains, Rules, Sets and Elements count the whole table after the sync.
	Chains, Rules, Sets, Elements int
	Duration                      time.Duration
}

// Enforcer commits models to our table, one transaction per Sync.
// Its methods may be called from several goroutines (syncs and metric
// scrapes); mu guards committed.
type Enforcer struct {
	mu    sync.Mutex
	cfg   Config
	netns *os.File
	table *nftables.Table
	// committed is what the kernel holds since the last successful commit;
	// nil when unknown (start, failed commit, drift), so that the next
	// Sync replaces the table whole.
	committed *Ruleset
	// committedModel is the model committed was compiled from; the next
	// compile reuses the sets it did not change.
	committedModel *selectors.Model
}

// NewEnforcer opens the network namespace (if any). It does not touch the
// kernel's tables until the first Sync.
func NewEnforcer(cfg Config) (*Enforcer, error) {
	if cfg.Table == "" {
		cfg.Table = "nftpol"
	}
	if cfg.Deny == "" {
		cfg.Deny = DenyDrop
	}
	if _, err := ParseDenyAction(string(cfg.Deny)); err != nil {
		return nil, err
	}
	e := &Enforcer{cfg: cfg, table: &nftables.Table{Name: cfg.Table, Family: nftables.TableFamilyINet}}
	if cfg.NetNSPath != "" {
		f, err := os.Open(cfg.NetNSPath)
		if err != nil {
			return nil, fmt.Errorf("opening network namespace: %w", err)
		}
		e.netns = f
	}
	return e, nil
}

// Close releases the namespace handle. The table stays in the kernel.
func (e *Enforcer) Close() error {
	if e.netns != nil {
		return e.netns.Close()
	}
	return nil
}

// Invalidate makes the next Sync replace the whole table.
func (e *Enforcer) Invalidate() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.committed = nil
}

// conn returns a fresh netlink connection: google/nftables keeps a sticky
// error and queued messages per Conn, so each transaction gets its own.
func (e *Enforcer) conn() (*nftables.Conn, error) {
	return e.dial()
}

// readConn returns a connection that keeps one socket for many requests
// (reading a table is one request per chain and set, and a socket per
// request means entering the namespace each time). Close it with
// CloseLasting.
func (e *Enforcer) readConn() (*nftables.Conn, error) {
	return e.dial(nftables.AsLasting())
}

func (e *Enforcer) dial(extra ...nftables.ConnOption) (*nftables.Conn, error) {
	opts := append([]nftables.ConnOption{nftables.WithSockOptions(raiseBuffers)}, extra...)
	if e.netns != nil {
		opts = append(opts, nftables.WithNetNSFd(int(e.netns.Fd())))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	return c, nil
}

func raiseBuffers(c *netlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		for _, opt := range []int{unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
			if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, socketBuffer); e != nil {
				serr = fmt.Errorf("raising netlink socket buffers: %w", e)
			}
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// Sync commits the table for m: the difference from the last commit, or
// the whole table in one transaction when that is unknown.
func (e *Enforcer) Sync(m *selectors.Model) (SyncStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	start := time.Now()
	desired := compileReusing(m, e.cfg, e.committed, e.committedModel)
	plan := Diff(e.committed, desired)
	stats := SyncStats{PlanStats: plan.Stats(desired)}
	stats.Chains, stats.Rules, stats.Sets, stats.Elements = desired.Counts()
	if plan.Empty() {
		stats.Duration = time.Since(start)
		return stats, nil
	}
	c, err := e.conn()
	if err != nil {
		return stats, err
	}
	if err := e.apply(c, plan, desired); err != nil {
		e.committed = nil
		return stats, fmt.Errorf("preparing the transaction: %w", err)
	}
	if err := c.Flush(); err != nil {
		// The transaction is atomic: the kernel kept the previous table.
		// What that is exactly we no longer assume.
		e.committed = nil
		return stats, fmt.Errorf("committing table inet %s: %w", e.cfg.Table, err)
	}
	e.committed, e.committedModel = desired, setsOf(m)
	stats.Duration = time.Since(start)
	return stats, nil
}

// setsOf copies the sets of m: the next compile compares them with its
// model's, and a caller may reuse and change the model it passed.
func setsOf(m *selectors.Model) *selectors.Model {
	out := &selectors.Model{
		AddrSets: make([]selectors.AddrSet, len(m.AddrSets)),
		PortSets: make([]selectors.PortSet, len(m.PortSets)),
	}
	for i, s := range m.AddrSets {
		out.AddrSets[i] = selectors.AddrSet{ID: s.ID, Description: s.Description, Addrs: slices.Clone(s.Addrs), Ranges: slices.Clone(s.Ranges)}
	}
	for i, s := range m.PortSets {
		out.PortSets[i] = selectors.PortSet{ID: s.ID, Description: s.Description, Entries: slices.Clone(s.Entries)}
	}
	return out
}

// apply queues the plan on c in an order the kernel accepts inside one
// transaction: objects exist before rules and elements refer to them, and
// references are gone before what they refer to is deleted.
func (e *Enforcer) apply(c *nftables.Conn, plan *Plan, desired *Ruleset) error {
	if plan.Full {
		// Create (no-op if present), delete, create: the old table and
		// everything in it go in the same transaction that brings the new
		// one, so no packet ever sees an empty table.
		c.AddTable(e.table)
		c.DelTable(e.table)
		c.AddTable(e.table)
	}
	sets := map[string]*nftables.Set{}
	setIDs := map[string]uint32{}
	setRef := func(name string, kind setKind) *nftables.Set {
		if s, ok := sets[name]; ok {
			return s
		}
		s := &nftables.Set{Table: e.table, Name: name}
		applyKind(s, kind)
		sets[name] = s
		return s
	}

	for _, name := range sortedMapKeys(plan.DelElems) {
		spec := e.committed.sets[name]
		if err := e.elements(c, setRef(name, spec.kind), spec, plan.DelElems[name], false); err != nil {
			return err
		}
	}
	for _, name := range plan.DelSets {
		if e.committed != nil && e.committed.sets[name] != nil && slicesContains(plan.AddSets, name) {
			// Replaced set: delete before re-adding.
			c.DelSet(&nftables.Set{Table: e.table, Name: name})
		}
	}
	for _, name := range plan.AddSets {
		spec := desired.sets[name]
		s := &nftables.Set{Table: e.table, Name: name, Comment: spec.comment}
		applyKind(s, spec.kind)
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("adding set %s: %w", name, err)
		}
		sets[name] = s
		setIDs[name] = s.ID
	}
	for _, name := range plan.AddChains {
		c.AddChain(e.chain(desired.chains[name]))
	}
	for _, name := range sortedMapKeys(plan.AddElems) {
		spec := desired.sets[name]
		if spec.kind.vmap() {
			continue // after the chains they jump to have their rules
		}
		if err := e.elements(c, setRef(name, spec.kind), spec, plan.AddElems[name], true); err != nil {
			return err
		}
	}
	for _, name := range plan.RewriteChains {
		c.FlushChain(&nftables.Chain{Table: e.table, Name: name})
	}
	for _, name := range append(append([]string(nil), plan.AddChains...), plan.RewriteChains...) {
		spec := desired.chains[name]
		ch := &nftables.Chain{Table: e.table, Name: name}
		for i := range spec.rules {
			r := &spec.rules[i]
			rule := &nftables.Rule{Table: e.table, Chain: ch, Exprs: r.exprs(setIDs)}
			if r.comment != "" {
				rule.UserData = commentUserData(r.comment)
			}
			c.AddRule(rule)
		}
	}
	for _, name := range sortedMapKeys(plan.AddElems) {
		spec := desired.sets[name]
		if !spec.kind.vmap() {
			continue
		}
		if err := e.elements(c, setRef(name, spec.kind), spec, plan.AddElems[name], true); err != nil {
			return err
		}
	}
	for _, name := range plan.DelChains {
		c.FlushChain(&nftables.Chain{Table: e.table, Name: name})
	}
	for _, name := range plan.DelChains {
		c.DelChain(&nftables.Chain{Table: e.table, Name: name})
	}
	for _, name := range plan.DelSets {
		if !slicesContains(plan.AddSets, name) {
			c.DelSet(&nftables.Set{Table: e.table, Name: name})
		}
	}
	return nil
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func sortedMapKeys(m map[string][]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (e *Enforcer) chain(spec *chainSpec) *nftables.Chain {
	ch := &nftables.Chain{Table: e.table, Name: spec.name}
	if spec.hook != "" {
		accept := nftables.ChainPolicyAccept
		ch.Type = nftables.ChainTypeFilter
		ch.Priority = nftables.ChainPriorityRef(nftables.ChainPriority(spec.prio))
		ch.Policy = &accept
		ch.Hooknum = nftables.ChainHookForward
		if spec.hook == "input" {
			ch.Hooknum = nftables.ChainHookInput
		}
	}
	return ch
}

func applyKind(s *nftables.Set, kind setKind) {
	switch kind {
	case kindAddr4:
		s.KeyType = nftables.TypeIPAddr
	case kindAddr6:
		s.KeyType = nftables.TypeIP6Addr
	case kindInterval4:
		s.KeyType, s.Interval = nftables.TypeIPAddr, true
	case kindInterval6:
		s.KeyType, s.Interval = nftables.TypeIP6Addr, true
	case kindPorts4:
		s.KeyType, s.Concatenation = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService), true
	case kindPorts6:
		s.KeyType, s.Concatenation = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService), true
	case kindVmap4:
		s.KeyType, s.IsMap, s.DataType = nftables.TypeIPAddr, true, nftables.TypeVerdict
	case kindVmap6:
		s.KeyType, s.IsMap, s.DataType = nftables.TypeIP6Addr, true, nftables.TypeVerdict
	}
}

// kernelElements turns one of our element keys into kernel elements: an
// interval [first, last] is a start element and an end element at last+1
// (none when last is the top of the address space).
func kernelElements(spec *setSpec, key string) []nftables.SetElement {
	switch {
	case spec.kind.interval():
		n := len(key) / 2
		first, last := []byte(key[:n]), []byte(key[n:])
		out := []nftables.SetElement{{Key: first}}
		if end, ok := increment(last); ok {
			out = append(out, nftables.SetElement{Key: end, IntervalEnd: true})
		}
		return out
	case spec.kind.vmap():
		return []nftables.SetElement{{Key: []byte(key), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: spec.elems[key]}}}
	}
	return []nftables.SetElement{{Key: []byte(key)}}
}

// increment returns b+1 as a big-endian number, false on overflow.
func increment(b []byte) ([]byte, bool) {
	out := bytes.Clone(b)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			return out, true
		}
	}
	return nil, false
}

// elements queues element adds or deletes in chunks.
func (e *Enforcer) elements(c *nftables.Conn, s *nftables.Set, spec *setSpec, keys []string, add bool) error {
	if !add {
		// Deleting: the elements to delete are those of the committed
		// spec (a vmap's value does not matter for deletion).
		spec = &setSpec{name: spec.name, kind: spec.kind, elems: spec.elems}
	}
	var batch []nftables.SetElement
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		var err error
		if add {
			err = c.SetAddElements(s, batch)
		} else {
			err = c.SetDeleteElements(s, batch)
		}
		batch = nil
		if err != nil {
			return fmt.Errorf("queuing elements of set %s: %w", s.Name, err)
		}
		return nil
	}
	for _, k := range keys {
		batch = append(batch, kernelElements(spec, k)...)
		if len(batch) >= elemChunk {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// DeleteTable removes our table, and nothing else, if it exists.
func (e *Enforcer) DeleteTable() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.conn()
	if err != nil {
		return err
	}
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("listing tables: %w", err)
	}
	for _, t := range tables {
		if t.Name == e.cfg.Table {
			c.DelTable(e.table)
			if err := c.Flush(); err != nil {
				return fmt.Errorf("deleting table inet %s: %w", e.cfg.Table, err)
			}
			break
		}
	}
	e.committed = nil
	return nil
}

// Verify reads our table back and compares it with what was committed:
// every chain with its hook and its rules, every set with its elements.
// Nothing committed yet verifies trivially.
func (e *Enforcer) Verify() error {
	e.mu.Lock()
	want := e.committed
	e.mu.Unlock()
	if want == nil {
		return nil
	}
	c, err := e.readConn()
	if err != nil {
		return err
	}
	defer func() { _ = c.CloseLasting() }()
	got, err := e.readTable(c)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDrift, err)
	}
	for _, name := range got.sortedChainNames() {
		if _, ok := want.chains[name]; !ok {
			return fmt.Errorf("%w: unexpected chain %s", ErrDrift, name)
		}
	}
	for _, name := range want.sortedChainNames() {
		w, g := want.chains[name], got.chains[name]
		switch {
		case g == nil:
			return fmt.Errorf("%w: chain %s is missing", ErrDrift, name)
		case g.hook != w.hook || g.prio != w.prio:
			return fmt.Errorf("%w: chain %s is hooked differently", ErrDrift, name)
		case !slices.Equal(g.rules, w.rules):
			return fmt.Errorf("%w: chain %s has other rules (%d, want %d)", ErrDrift, name, len(g.rules), len(w.rules))
		}
	}
	for _, name := range got.sortedSetNames() {
		if _, ok := want.sets[name]; !ok {
			return fmt.Errorf("%w: unexpected set %s", ErrDrift, name)
		}
	}
	for _, name := range want.sortedSetNames() {
		w, g := want.sets[name], got.sets[name]
		if g == nil {
			return fmt.Errorf("%w: set %s is missing", ErrDrift, name)
		}
		if err := compareElements(w, g); err != nil {
			return fmt.Errorf("%w: set %s: %v", ErrDrift, name, err)
		}
	}
	return nil
}

// compareElements checks a set read back against the committed one.
func compareElements(want, got *setSpec) error {
	if want.kind != got.kind {
		return errors.New("other type")
	}
	for k, v := range got.elems {
		wv, ok := want.elems[k]
		if !ok {
			return fmt.Errorf("unexpected element %s", describeKey([]byte(k)))
		}
		if wv != v {
			return fmt.Errorf("element %s jumps to %s, want %s", describeKey([]byte(k)), v, wv)
		}
	}
	if len(got.elems) != len(want.elems) {
		return fmt.Errorf("%d elements, want %d", len(got.elems), len(want.elems))
	}
	return nil
}

func describeKey(k []byte) string {
	if a, ok := netip.AddrFromSlice(k); ok {
		return a.String()
	}
	return fmt.Sprintf("%x", k)
}

// verdictChain decodes the jump target of a verdict map element's data
// (google/nftables returns it raw: the nested NFTA_DATA_VERDICT attributes).
func verdictChain(data []byte) string {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return ""
	}
	for ad.Next() {
		if ad.Type() == unix.NFTA_VERDICT_CHAIN {
			return ad.String()
		}
	}
	return ""
}
