package controllers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
)

// The table accepts packets of established connections before it judges
// anything, so a policy that starts denying a connection stops only new
// ones: an open TCP stream would run on for as long as it lives. After a
// commit, the flow cutter deletes the conntrack entries of this node whose
// connections the committed rules deny; their next packet is then judged
// as a new connection, and denied.
//
// A sweep of a large conntrack table takes seconds (BenchmarkFlowCut100k),
// so it runs off the sync loop: Sweep hands the committed model to one
// sweeping goroutine and returns. At most one sweep runs and one waits; a
// newer commit supersedes both: the waiting sweep will read the newest
// model, and the running one decides the entries it has not reached yet
// with the newest model (the rules now in force), then one more sweep
// follows for the entries it decided before. A burst of commits costs at
// most two sweeps, and every sweep finishes, however fast commits come.

// FlowCutStats say what one sweep of the conntrack table did.
type FlowCutStats struct {
	// Entries is the size of the conntrack table read; Considered the
	// entries with a pod of the model at one end; Cut the entries deleted.
	Entries, Considered, Cut int
	// Gone counts entries the kernel no longer held when deleted (they
	// ended between the dump and the delete).
	Gone int
	// Superseded counts the newer models the sweep took up midway.
	Superseded int
	Duration   time.Duration
}

// FlowCutter deletes the conntrack entries a Model denies, in one network
// namespace.
type FlowCutter struct {
	// NetNSPath is the node's network namespace; "" is our own.
	NetNSPath string
	// Log receives the outcome of the pickup rounds (see cutPickups).
	Log logr.Logger

	// pickups runs the rounds after a sweep; Wait waits for them.
	pickups sync.WaitGroup
	// strict is set once TCP pickups are off in the namespace;
	// strictTried once the attempt was made (it is made once: a
	// read-only /proc/sys stays read-only).
	strict, strictTried bool
	// noPickups skips the pickup rounds (the benchmark measures the
	// sweep alone).
	noPickups bool

	// newest is the model of the last commit handed to Sweep.
	newest atomic.Pointer[selectors.Model]
	// sweepMu guards wanted, sweeping and report.
	sweepMu sync.Mutex
	// wanted is set when newest has not been swept from the start yet;
	// sweeping while the sweeping goroutine runs.
	wanted, sweeping bool
	// report receives the outcome of every sweep Sweep started.
	report func(FlowCutStats, error)
	// sweeps waits for the sweeping goroutine.
	sweeps sync.WaitGroup
	// swept counts the sweeps Sweep started that have ended.
	swept atomic.Int64
}

// tcpLooseSysctl is where conntrack is told whether to pick up TCP
// connections from a packet in their middle.
const tcpLooseSysctl = "/proc/sys/net/netfilter/nf_conntrack_tcp_loose"

// Strict turns off conntrack's pickup of TCP connections from a packet in
// their middle (net.netfilter.nf_conntrack_tcp_loose=0) in the node's
// namespace. With pickups on, a cut TCP connection revives at once: the
// server's next segment (an answer in flight, a retransmission) finds no
// entry, makes a new one with the server as origin, the table allows it
// as a connection the server opens, and the client's segments pass as its
// replies. With pickups off such a segment is "invalid", creates no entry
// and is judged like a new connection, each one, in both directions: the
// denied side's segments stay denied. Connections whose entries are gone
// for another reason (a flush) are judged the same way, packet by packet,
// and pass where the policies allow them.
func (c *FlowCutter) Strict() error {
	if c.strict {
		return nil
	}
	c.strictTried = true
	err := inNetns(c.NetNSPath, func() error {
		return os.WriteFile(tcpLooseSysctl, []byte("0"), 0o644)
	})
	if err != nil {
		return fmt.Errorf("turning off conntrack's TCP pickups: %w", err)
	}
	c.strict = true
	return nil
}

// inNetns runs fn on an OS thread in the namespace at path ("" is ours):
// /proc/sys/net shows the namespace of the thread that opens it. The
// thread is never unlocked, so the runtime discards it afterwards.
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := os.Open(path)
		if err != nil {
			errc <- fmt.Errorf("opening network namespace: %w", err)
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("entering network namespace %s: %w", path, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// pickupRounds are the delays, after a sweep, at which the reverse
// entries of the cut connections are deleted (see cutPickups): a packet
// in flight the other way when the entry was cut, and the peer's
// retransmissions of it (the TCP retransmission timeout starts at
// 200 ms), come within them.
var pickupRounds = []time.Duration{5 * time.Millisecond, 50 * time.Millisecond, 250 * time.Millisecond, 750 * time.Millisecond, 2 * time.Second}

// Sweep starts a sweep for model, the model just committed, in the
// background and returns at once; report receives the outcome of each
// sweep (called from the sweeping goroutine, one call at a time). A newer
// call supersedes the sweeps of older ones (see above). The model must not
// change afterwards.
func (c *FlowCutter) Sweep(model *selectors.Model, report func(FlowCutStats, error)) {
	c.newest.Store(model)
	c.sweepMu.Lock()
	defer c.sweepMu.Unlock()
	c.wanted, c.report = true, report
	if c.sweeping {
		return
	}
	c.sweeping = true
	c.sweeps.Add(1)
	go c.sweepWanted()
}

// sweepWanted sweeps while a sweep is wanted; it ends when none is.
func (c *FlowCutter) sweepWanted() {
	defer c.sweeps.Done()
	for {
		c.sweepMu.Lock()
		if !c.wanted {
			c.sweeping = false
			c.sweepMu.Unlock()
			return
		}
		c.wanted = false
		report := c.report
		c.sweepMu.Unlock()
		st, err := c.sweep(c.newest.Load)
		report(st, err)
		c.swept.Add(1)
	}
}

// Busy reports whether a sweep Sweep started runs or waits to run.
func (c *FlowCutter) Busy() bool {
	c.sweepMu.Lock()
	defer c.sweepMu.Unlock()
	return c.sweeping
}

// Collectors are the metrics of the sweeps: whether one runs (or waits)
// now, and how many ended. A sweep after a policy change competes with
// the packet path for the CPU; BenchmarkPacketPath waits for the gauge to
// fall to 0 before it measures, so that it measures the packets alone.
func (c *FlowCutter) Collectors() []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "nftpol_flow_sweep_running",
			Help: "1 while a sweep of the conntrack table after a commit runs or waits to run, else 0."},
			func() float64 {
				if c.Busy() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "nftpol_flow_sweeps_total",
			Help: "Sweeps of the conntrack table after a commit that have ended."},
			func() float64 { return float64(c.swept.Load()) }),
	}
}

// Cut reads the conntrack table and deletes every entry whose connection
// the model denies, in the caller's goroutine.
func (c *FlowCutter) Cut(model *selectors.Model) (FlowCutStats, error) {
	return c.sweep(func() *selectors.Model { return model })
}

// sweep reads the conntrack table and deletes every entry whose connection
// the model latest returns denies; it asks again before each entry, and
// decides the entries left with a newer model as soon as there is one. A
// connection is decided on its original direction, as the table decides
// its first packet: the source address and the destination address and
// port after destination NAT (the reply tuple's source), protocol.
// Connections from the node itself are never cut: the table does not
// judge the node's own traffic to its pods.
func (c *FlowCutter) sweep(latest func() *selectors.Model) (FlowCutStats, error) {
	start := time.Now()
	model := latest()
	var st FlowCutStats
	if !c.strictTried {
		// Cutting goes on without it (UDP, and TCP connections whose
		// server does not send again, stay cut; the pickup rounds below
		// delete revived entries for two seconds): a container whose
		// /proc/sys is read-only must not lose the cut altogether.
		if err := c.Strict(); err != nil {
			c.Log.Error(err, "TCP pickups stay on: a cut TCP connection whose server keeps sending can be picked up again by conntrack")
		}
	}
	d := newFlowDecider(model)
	if len(model.Pods) == 0 {
		// No pod is isolated: nothing can be denied.
		return st, nil
	}
	conn, err := c.dial()
	if err != nil {
		return st, err
	}
	defer conn.Close()
	nodeAddrs, err := c.nodeAddrs()
	if err != nil {
		return st, err
	}
	flows, err := conn.Dump(nil)
	if err != nil {
		return st, fmt.Errorf("dumping conntrack: %w", err)
	}
	st.Entries = len(flows)
	var errs []error
	var reverse []conntrack.Tuple
	for i := range flows {
		if m := latest(); m != model {
			model, d = m, newFlowDecider(m)
			st.Superseded++
		}
		f := &flows[i]
		if !involves(d.Decider, f) {
			continue
		}
		st.Considered++
		if !d.denied(nodeAddrs, f) {
			continue
		}
		switch err := conn.Delete(deletion(f)); {
		case err == nil:
			st.Cut++
			reverse = append(reverse, f.TupleReply)
		case errors.Is(err, unix.ENOENT):
			st.Gone++
		default:
			if len(errs) < 3 {
				errs = append(errs, fmt.Errorf("deleting conntrack entry %s: %w", f.TupleOrig, err))
			}
		}
	}
	st.Duration = time.Since(start)
	if len(reverse) > 0 && !c.noPickups {
		c.pickups.Add(1)
		go c.cutPickups(reverse)
	}
	return st, errors.Join(errs...)
}

// inverse is the tuple of the other direction of a connection without NAT.
func inverse(t conntrack.Tuple) conntrack.Tuple {
	r := t
	r.IP.SourceAddress, r.IP.DestinationAddress = t.IP.DestinationAddress, t.IP.SourceAddress
	r.Proto.SourcePort, r.Proto.DestinationPort = t.Proto.DestinationPort, t.Proto.SourcePort
	return r
}

// Wait waits for the sweeps Sweep started and for the pickup rounds of
// past sweeps to end.
func (c *FlowCutter) Wait() {
	c.sweeps.Wait()
	c.pickups.Wait()
}

// cutPickups deletes, in a few rounds, the entries whose original tuple
// is the reply tuple of a connection just cut. conntrack picks up a TCP
// or UDP connection from any packet that has no entry: when the first
// packet after the cut comes from the side the policy does not restrict
// (the server's answer in flight, a retransmission), the new entry has
// that side as its origin, the table allows it as a new connection from
// there, and the denied side's packets then pass as its replies. Such an
// entry is the cut connection itself, so it is cut too; the denied
// side's next packet is then judged as new, and denied. A connection
// really opened from the other side cannot have these exact tuples (its
// ports are the cut one's, reversed) while the cut one was alive.
func (c *FlowCutter) cutPickups(reverse []conntrack.Tuple) {
	defer c.pickups.Done()
	conn, err := c.dial()
	if err != nil {
		c.Log.Error(err, "cutting the reverse pickups of cut flows")
		return
	}
	defer conn.Close()
	cut := 0
	var last error
	for i, d := range pickupRounds {
		if i == 0 {
			time.Sleep(d)
		} else {
			time.Sleep(d - pickupRounds[i-1])
		}
		for _, t := range reverse {
			// Both tuples: the request's address family is IPv6 only
			// when both are.
			switch err := conn.Delete(conntrack.Flow{TupleOrig: t, TupleReply: inverse(t), Zone: t.Zone}); {
			case err == nil:
				cut++
			case !errors.Is(err, unix.ENOENT):
				last = err
			}
		}
	}
	if last != nil {
		c.Log.Error(last, "cutting the reverse pickups of cut flows", "cut", cut)
		return
	}
	if cut > 0 {
		c.Log.Info("cut reverse pickups of cut flows", "cut", cut, "flows", len(reverse))
	}
}

func involves(d *selectors.Decider, f *conntrack.Flow) bool {
	return d.Involves(f.TupleOrig.IP.SourceAddress) || d.Involves(f.TupleReply.IP.SourceAddress)
}

// flowDecider decides conntrack entries with one model, each connection
// once: the entries of a sweep are mostly many connections between the
// same two pods to the same port (a client's short connections and their
// TIME_WAIT entries), which differ only in the source port, which no rule
// reads. Deciding one against a pod that 1,000 policies select checks
// their rules one by one; a sweep after a phase change of
// BenchmarkPacketPath did that for each of ~16,000 entries.
type flowDecider struct {
	*selectors.Decider
	verdicts map[flowConn]bool // denied, by connection
}

// flowConn is what decides an entry: source, destination after DNAT,
// protocol and destination port (0 for protocols without ports).
type flowConn struct {
	src, dst netip.Addr
	proto    selectors.Protocol
	port     uint16
}

func newFlowDecider(m *selectors.Model) *flowDecider {
	return &flowDecider{Decider: selectors.NewDecider(m), verdicts: map[flowConn]bool{}}
}

// denied decides one entry with the model.
func (d *flowDecider) denied(nodeAddrs map[netip.Addr]bool, f *conntrack.Flow) bool {
	c := flowConn{
		src: f.TupleOrig.IP.SourceAddress.Unmap(),
		// After DNAT the connection goes to where replies come from.
		dst:   f.TupleReply.IP.SourceAddress.Unmap(),
		proto: selectors.Protocol(f.TupleOrig.Proto.Protocol),
	}
	if nodeAddrs[c.src] {
		return false
	}
	switch c.proto {
	case selectors.ProtocolTCP, selectors.ProtocolUDP, selectors.ProtocolSCTP:
		c.port = f.TupleReply.Proto.SourcePort
	}
	v, ok := d.verdicts[c]
	if !ok {
		v = !d.Allowed(c.src, c.dst, c.proto, c.port)
		d.verdicts[c] = v
	}
	return v
}

// deletion is the request that deletes exactly entry f: its tuples, zone
// and ID (the kernel refuses the delete when a new entry with the same
// tuples took the place of f).
func deletion(f *conntrack.Flow) conntrack.Flow {
	return conntrack.Flow{TupleOrig: f.TupleOrig, TupleReply: f.TupleReply, ID: f.ID, Zone: f.Zone}
}

// dial opens a conntrack netlink socket in the node's namespace.
func (c *FlowCutter) dial() (*conntrack.Conn, error) {
	cfg, closeNS, err := c.netlinkConfig()
	if err != nil {
		return nil, err
	}
	defer closeNS()
	conn, err := conntrack.Dial(cfg)
	if err != nil {
		return nil, fmt.Errorf("opening conntrack netlink: %w", err)
	}
	return conn, nil
}

func (c *FlowCutter) netlinkConfig() (*netlink.Config, func(), error) {
	if c.NetNSPath == "" {
		return &netlink.Config{}, func() {}, nil
	}
	ns, err := os.Open(c.NetNSPath)
	if err != nil {
		return nil, nil, fmt.Errorf("opening network namespace: %w", err)
	}
	return &netlink.Config{NetNS: int(ns.Fd())}, func() { ns.Close() }, nil
}

// nodeAddrs lists the addresses of the node's interfaces (rtnetlink
// RTM_GETADDR in the node's namespace).
func (c *FlowCutter) nodeAddrs() (map[netip.Addr]bool, error) {
	cfg, closeNS, err := c.netlinkConfig()
	if err != nil {
		return nil, err
	}
	defer closeNS()
	conn, err := netlink.Dial(unix.NETLINK_ROUTE, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening rtnetlink: %w", err)
	}
	defer conn.Close()
	req := netlink.Message{
		Header: netlink.Header{Type: unix.RTM_GETADDR, Flags: netlink.Request | netlink.Dump},
		Data:   make([]byte, unix.SizeofIfAddrmsg), // family AF_UNSPEC: both
	}
	msgs, err := conn.Execute(req)
	if err != nil {
		return nil, fmt.Errorf("listing the node's addresses: %w", err)
	}
	addrs := map[netip.Addr]bool{}
	for _, m := range msgs {
		if len(m.Data) < unix.SizeofIfAddrmsg {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[unix.SizeofIfAddrmsg:])
		if err != nil {
			return nil, fmt.Errorf("decoding an address: %w", err)
		}
		ad.ByteOrder = binary.NativeEndian
		for ad.Next() {
			if t := ad.Type(); t == unix.IFA_ADDRESS || t == unix.IFA_LOCAL {
				if a, ok := netip.AddrFromSlice(ad.Bytes()); ok {
					addrs[a.Unmap()] = true
				}
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decoding an address: %w", err)
		}
	}
	return addrs, nil
}

// mayDenyMore reports whether a commit may have removed an allow, so that
// established flows may now be denied: any change to the table may (an
// element leaving an address set, a pod becoming isolated, a rule
// rewritten), a commit that changed nothing may not.
func mayDenyMore(stats nft.CommitStats) bool {
	p := stats.PlanStats
	return p.Full || p.SetsAdded+p.SetsDeleted+p.ChainsAdded+p.ChainsRewritten+p.ChainsDeleted+p.ElementsAdded+p.ElementsDeleted > 0
}
