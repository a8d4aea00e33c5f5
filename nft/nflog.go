package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/nftpol/nftpol/selectors"
)

// nfnetlink_log constants (linux/netfilter/nfnetlink_log.h); x/sys/unix
// does not carry them.
const (
	nfulnlMsgPacket = 0
	nfulnlMsgConfig = 1

	nfulaPayload = 9
	nfulaPrefix  = 10

	nfulaCfgCmd     = 1
	nfulaCfgMode    = 2
	nfulaCfgTimeout = 4
	nfulaCfgQthresh = 5

	nfulnlCfgCmdBind   = 1
	nfulnlCfgCmdUnbind = 2
	nfulnlCopyPacket   = 2

	// copyRange is how much of each packet the kernel sends: the IP and
	// transport headers are all we read.
	copyRange = 128
)

// Log prefixes of the deny paths; they tell the reader the direction.
const (
	logPrefixIngress = "nftpol-deny-ingress"
	logPrefixEgress  = "nftpol-deny-egress"
)

func logPrefix(dir selectors.Direction) string {
	if dir == selectors.Egress {
		return logPrefixEgress
	}
	return logPrefixIngress
}

// DeniedPacket is the first packet of a denied connection as the kernel
// logged it.
type DeniedPacket struct {
	Direction selectors.Direction
	Src, Dst  netip.Addr
	Protocol  selectors.Protocol
	Port      uint16
	// Policy names the ClusterNetworkPolicy rule that denied the packet
	// ("name ingress[0]", see selectors.ClusterRule.Label; cut when the
	// log prefix could not hold it), "" for a NetworkPolicy isolation.
	// With WouldDeny, the policy in audit mode that would have denied it
	// (a NetworkPolicy key or a ClusterNetworkPolicy name, cut alike).
	Policy string
	// WouldDeny is set for a packet that was allowed and that Policy, in
	// audit mode, would deny (see audit.go).
	WouldDeny bool
}

// ReadDenied subscribes to the NFLOG group of the deny paths in the
// network namespace at netnsPath ("" is our own) and calls fn for every
// logged packet until ctx ends. The kernel drops log messages when the
// socket is full, so a flood costs messages, never the packet path or this
// loop.
func ReadDenied(ctx context.Context, netnsPath string, group uint16, fn func(DeniedPacket)) error {
	cfg := &netlink.Config{}
	if netnsPath != "" {
		f, err := os.Open(netnsPath)
		if err != nil {
			return fmt.Errorf("opening network namespace: %w", err)
		}
		defer f.Close()
		cfg.NetNS = int(f.Fd())
	}
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return fmt.Errorf("opening the netfilter netlink socket: %w", err)
	}
	defer c.Close()
	// A group has one listener per namespace: take it over from a
	// previous agent that died without unbinding.
	_ = nflogConfig(c, group, nfulaCfgCmd, []byte{nfulnlCfgCmdUnbind})
	if err := nflogConfig(c, group, nfulaCfgCmd, []byte{nfulnlCfgCmdBind}); err != nil {
		return fmt.Errorf("binding NFLOG group %d: %w", group, err)
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, copyRange)
	mode[4] = nfulnlCopyPacket
	if err := nflogConfig(c, group, nfulaCfgMode, mode); err != nil {
		return fmt.Errorf("setting NFLOG copy mode: %w", err)
	}
	// Deliver each message at once instead of batching for a second.
	one := binary.BigEndian.AppendUint32(nil, 1)
	if err := nflogConfig(c, group, nfulaCfgQthresh, one); err != nil {
		return fmt.Errorf("setting NFLOG queue threshold: %w", err)
	}
	_ = nflogConfig(c, group, nfulaCfgTimeout, binary.BigEndian.AppendUint32(nil, 0))

	for ctx.Err() == nil {
		if err := c.SetReadDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
			return err
		}
		msgs, err := c.Receive()
		if err != nil {
			var ne interface{ Timeout() bool }
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			if errors.Is(err, unix.ENOBUFS) {
				continue // the kernel dropped log messages; go on
			}
			return fmt.Errorf("reading NFLOG: %w", err)
		}
		for _, m := range msgs {
			if p, ok := parseNflog(m); ok {
				fn(p)
			}
		}
	}
	return nil
}

func nflogConfig(c *netlink.Conn, group uint16, attr uint16, value []byte) error {
	ae := netlink.NewAttributeEncoder()
	ae.Bytes(attr, value)
	attrs, err := ae.Encode()
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0}
	binary.BigEndian.PutUint16(hdr[2:], group)
	_, err = c.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | nfulnlMsgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(hdr, attrs...),
	})
	return err
}

func parseNflog(m netlink.Message) (DeniedPacket, bool) {
	if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8|nfulnlMsgPacket) || len(m.Data) < 4 {
		return DeniedPacket{}, false
	}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return DeniedPacket{}, false
	}
	var prefix string
	var payload []byte
	for ad.Next() {
		switch ad.Type() {
		case nfulaPrefix:
			prefix = strings.TrimRight(string(ad.Bytes()), "\x00")
		case nfulaPayload:
			payload = ad.Bytes()
		}
	}
	var p DeniedPacket
	prefix, p.Policy, _ = strings.Cut(prefix, " ")
	switch prefix {
	case logPrefixIngress:
		p.Direction = selectors.Ingress
	case logPrefixEgress:
		p.Direction = selectors.Egress
	default:
		dir, ok := wouldDenyDirection(prefix)
		if !ok {
			return DeniedPacket{}, false
		}
		p.Direction, p.WouldDeny = dir, true
	}
	return p, parsePacket(payload, &p)
}

// parsePacket reads addresses, protocol and destination port from an IP
// packet.
func parsePacket(b []byte, p *DeniedPacket) bool {
	if len(b) < 1 {
		return false
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return false
		}
		ihl := int(b[0]&0x0f) * 4
		p.Protocol = selectors.Protocol(b[9])
		p.Src = netip.AddrFrom4([4]byte(b[12:16]))
		p.Dst = netip.AddrFrom4([4]byte(b[16:20]))
		if ihl <= len(b) {
			l4 = b[ihl:]
		}
	case 6:
		if len(b) < 40 {
			return false
		}
		p.Protocol = selectors.Protocol(b[6])
		p.Src = netip.AddrFrom16([16]byte(b[8:24]))
		p.Dst = netip.AddrFrom16([16]byte(b[24:40]))
		l4 = b[40:]
	default:
		return false
	}
	switch p.Protocol {
	case selectors.ProtocolTCP, selectors.ProtocolUDP, selectors.ProtocolSCTP:
		if len(l4) >= 4 {
			p.Port = binary.BigEndian.Uint16(l4[2:4])
		}
	}
	return true
}
