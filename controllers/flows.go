package controllers

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"

	"github.com/mdlayher/netlink"
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

// FlowCutStats say what one sweep of the conntrack table did.
type FlowCutStats struct {
	// Entries is the size of the conntrack table read; Considered the
	// entries with a pod of the model at one end; Cut the entries deleted.
	Entries, Considered, Cut int
	// Gone counts entries the kernel no longer held when deleted (they
	// ended between the dump and the delete).
	Gone     int
	Duration time.Duration
}

// FlowCutter deletes the conntrack entries a Model denies, in one network
// namespace.
type FlowCutter struct {
	// NetNSPath is the node's network namespace; "" is our own.
	NetNSPath string
}

// Cut reads the conntrack table and deletes every entry whose connection
// the model denies. A connection is decided on its original direction,
// as the table decides its first packet: the source address and the
// destination address and port after destination NAT (the reply tuple's
// source), protocol. Connections from the node itself are never cut: the
// table does not judge the node's own traffic to its pods.
func (c *FlowCutter) Cut(model *selectors.Model) (FlowCutStats, error) {
	start := time.Now()
	var st FlowCutStats
	d := selectors.NewDecider(model)
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
	for i := range flows {
		f := &flows[i]
		if !involves(d, f) {
			continue
		}
		st.Considered++
		if !denied(d, nodeAddrs, f) {
			continue
		}
		switch err := conn.Delete(deletion(f)); {
		case err == nil:
			st.Cut++
		case errors.Is(err, unix.ENOENT):
			st.Gone++
		default:
			if len(errs) < 3 {
				errs = append(errs, fmt.Errorf("deleting conntrack entry %s: %w", f.TupleOrig, err))
			}
		}
	}
	st.Duration = time.Since(start)
	return st, errors.Join(errs...)
}

func involves(d *selectors.Decider, f *conntrack.Flow) bool {
	return d.Involves(f.TupleOrig.IP.SourceAddress) || d.Involves(f.TupleReply.IP.SourceAddress)
}

// denied decides one entry with the model.
func denied(d *selectors.Decider, nodeAddrs map[netip.Addr]bool, f *conntrack.Flow) bool {
	src := f.TupleOrig.IP.SourceAddress.Unmap()
	// After DNAT the connection goes to where replies come from.
	dst := f.TupleReply.IP.SourceAddress.Unmap()
	if nodeAddrs[src] {
		return false
	}
	proto := selectors.Protocol(f.TupleOrig.Proto.Protocol)
	var port uint16
	switch proto {
	case selectors.ProtocolTCP, selectors.ProtocolUDP, selectors.ProtocolSCTP:
		port = f.TupleReply.Proto.SourcePort
	}
	return !d.Allowed(src, dst, proto, port)
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
