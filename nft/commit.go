package nft

import (
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// socketBuffer is the netlink socket buffer size: large batches (10k
// chains, 100k elements) overflow the default ~208 KiB ("message too long",
// ENOBUFS on the acknowledgements).
const socketBuffer = 64 << 20

// CommitStats tells what one Commit did.
type CommitStats struct {
	PlanStats
	// Chains, Rules, Sets and Elements count the whole table after the
	// commit.
	Chains, Rules, Sets, Elements int
	Duration                      time.Duration
}

// Enforcer is the handle of our table in one network namespace: it
// commits rulesets, one transaction each, reads the table back and
// verifies it. It holds no model: only the ruleset last committed, which
// the next commit diffs against. Its methods may be called from several
// goroutines (syncs, verification, metric scrapes); mu guards committed.
type Enforcer struct {
	mu    sync.Mutex
	cfg   Config
	netns *os.File
	table *nftables.Table
	// committed is what the kernel holds since the last successful commit;
	// nil when unknown (start, failed commit, drift), so that the next
	// Commit replaces the table whole.
	committed *Ruleset
	// counters keeps the policy counters monotonic across rewrites.
	counters counterState
	// batches is the socket transactions are sent on, kept from one
	// commit to the next (batch.go); nil until the next commit dials it.
	batches *netlink.Conn
	// writes counts the transactions sent (applied or not) and table
	// deletions: a verification that reads the table while it changes
	// sees it move and draws no conclusion (Verify).
	writes uint64
}

// NewEnforcer opens the network namespace (if any). It does not touch the
// kernel's tables until the first Commit.
func NewEnforcer(cfg Config) (*Enforcer, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
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

// Config returns the enforcer's configuration, defaults filled in.
func (e *Enforcer) Config() Config { return e.cfg }

// Close releases the netlink socket and the namespace handle. The table
// stays in the kernel.
func (e *Enforcer) Close() error {
	e.mu.Lock()
	e.dropBatchConn()
	e.mu.Unlock()
	if e.netns != nil {
		return e.netns.Close()
	}
	return nil
}

// Invalidate makes the next Commit replace the whole table.
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
// (reading a table is one request per set, and a socket per request means
// entering the namespace each time). Close it with CloseLasting.
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

// Commit makes the kernel hold desired: the difference from the last
// commit, or the whole table, in one transaction. desired must come from
// a Compiler of the same table name; it is kept (not copied) as the
// committed ruleset, so the caller must not change it.
func (e *Enforcer) Commit(desired *Ruleset) (CommitStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	start := time.Now()
	if desired.Table != e.cfg.Table {
		return CommitStats{}, fmt.Errorf("ruleset of table %s given to the enforcer of table %s", desired.Table, e.cfg.Table)
	}
	plan := Diff(e.committed, desired)
	stats := CommitStats{PlanStats: plan.Stats(desired)}
	stats.Chains, stats.Rules, stats.Sets, stats.Elements = desired.Counts()
	if plan.Empty() {
		stats.Duration = time.Since(start)
		return stats, nil
	}
	msgs, err := recordBatch(func(c *nftables.Conn) error { return plan.queue(c, e.table) })
	if err != nil {
		e.committed = nil
		return stats, fmt.Errorf("preparing the transaction: %w", err)
	}
	e.writes++
	if err := e.sendBatch(msgs); err != nil {
		// The transaction is atomic: the kernel kept the previous table.
		// What that is exactly we no longer assume.
		e.committed = nil
		return stats, fmt.Errorf("committing table inet %s: %w", e.cfg.Table, err)
	}
	e.committed = desired
	e.counters.chainsRewritten(plan)
	stats.Duration = time.Since(start)
	return stats, nil
}

// Committed returns the ruleset last committed, nil when unknown. It must
// not be changed.
func (e *Enforcer) Committed() *Ruleset {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.committed
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
			e.writes++
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
