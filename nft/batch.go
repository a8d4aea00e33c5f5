package nft

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// This file sends a transaction without an acknowledgement per message.
//
// google/nftables asks the kernel to acknowledge every message of a batch
// and reads the acknowledgements one receive call each: a full commit of
// 10k chains and 100k elements is tens of thousands of messages, so as many
// acknowledgements built by the kernel and as many recvmsg calls. The
// kernel processes a batch whole inside the sendmsg call and reports an
// error for every message that fails, acknowledgement asked or not. So the
// batch asks for one acknowledgement only, on its last command: its
// arrival (or an error before it) says the transaction is decided, as the
// nft tool does it. The messages are the library's own, recorded from a
// connection that sends nothing (WithTestDial), so the encoding stays the
// library's.

// batchTimeout bounds the wait for the kernel's answer to a batch; the
// kernel answers within the sendmsg call, so only a broken socket waits.
const batchTimeout = 60 * time.Second

// recordBatch runs queue against a connection that records the messages
// of its transaction instead of sending them, and returns them: the batch
// begin marker, the commands, the batch end marker.
func recordBatch(queue func(*nftables.Conn) error) ([]netlink.Message, error) {
	var msgs []netlink.Message
	rec, err := nftables.New(nftables.WithTestDial(func(req []netlink.Message) ([]netlink.Message, error) {
		msgs = append(msgs, req...)
		return req, nil // echoed: the library takes them as acknowledgements
	}))
	if err != nil {
		return nil, fmt.Errorf("recording the batch: %w", err)
	}
	if err := queue(rec); err != nil {
		return nil, err
	}
	if err := rec.Flush(); err != nil {
		return nil, fmt.Errorf("recording the batch: %w", err)
	}
	return msgs, nil
}

// oneAck clears the acknowledgement request of every message but the last
// command (the one before the batch end marker), and the sequence numbers
// and port IDs the recording gave, which the sending connection assigns.
// It returns the index of the acknowledged message, -1 when there is no
// command.
func oneAck(msgs []netlink.Message) int {
	last := -1
	for i := range msgs {
		msgs[i].Header.Sequence, msgs[i].Header.PID = 0, 0
		if msgs[i].Header.Flags&netlink.Acknowledge != 0 {
			last = i
		}
		msgs[i].Header.Flags &^= netlink.Acknowledge
	}
	if last >= 0 {
		msgs[last].Header.Flags |= netlink.Acknowledge
	}
	return last
}

// sendBatch sends the recorded batch msgs in the enforcer's namespace and
// waits for the kernel's answer: the acknowledgement of the last command,
// or the first error, which means the kernel kept the table as it was.
//
// The socket is kept from one commit to the next (e.batches, under e.mu):
// dialing one means entering the namespace on a locked thread and raising
// its buffers, for every sync. It is kept only after a batch whose
// acknowledgement was read, which is the last message the kernel sends
// for a batch it applied, so the next batch finds nothing of this one
// left to read. After any other outcome it is closed, and the next batch
// dials a new one. A send that fails on a kept socket is sent once more on
// a new one: a netlink send that fails delivered nothing to the kernel.
func (e *Enforcer) sendBatch(msgs []netlink.Message) error {
	acked := oneAck(msgs)
	if acked < 0 {
		return nil
	}
	kept := e.batches != nil
	conn, err := e.batchConn()
	if err != nil {
		return err
	}
	sent, err := conn.SendMessages(msgs)
	if err != nil && kept {
		e.dropBatchConn()
		if conn, err = e.batchConn(); err != nil {
			return err
		}
		sent, err = conn.SendMessages(msgs)
	}
	if err != nil {
		e.dropBatchConn()
		return fmt.Errorf("sending the batch: %w", err)
	}
	if err := awaitAck(conn, sent[acked].Header.Sequence); err != nil {
		e.dropBatchConn()
		return err
	}
	return nil
}

// batchConn returns the kept batch socket, dialing it when there is none.
func (e *Enforcer) batchConn() (*netlink.Conn, error) {
	if e.batches != nil {
		return e.batches, nil
	}
	cfg := &netlink.Config{}
	if e.netns != nil {
		cfg.NetNS = int(e.netns.Fd())
	}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("opening netlink: %w", err)
	}
	if err := raiseBuffers(conn); err != nil {
		_ = conn.Close()
		return nil, err
	}
	e.batches = conn
	return conn, nil
}

// dropBatchConn closes the kept batch socket, if any.
func (e *Enforcer) dropBatchConn() {
	if e.batches != nil {
		_ = e.batches.Close()
		e.batches = nil
	}
}

// awaitAck reads the kernel's answer to a batch until the acknowledgement
// of the message numbered want, or an error.
func awaitAck(conn *netlink.Conn, want uint32) error {
	if err := conn.SetReadDeadline(time.Now().Add(batchTimeout)); err != nil {
		return err
	}
	for {
		replies, err := conn.Receive()
		if err != nil {
			return fmt.Errorf("the kernel refused the batch: %w", err)
		}
		for _, r := range replies {
			if r.Header.Type == netlink.Error && r.Header.Sequence == want {
				return nil
			}
		}
		if len(replies) == 0 {
			return errors.New("the kernel closed the answer to the batch without acknowledging it")
		}
	}
}
