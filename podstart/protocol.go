package podstart

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// DefaultSocket is where the agent listens for the plugin: a directory
// of the node (hostPath /run/nftpol) shared by the agent and the plugin.
const DefaultSocket = "/run/nftpol/cni.sock"

// Op is what the plugin asks the agent.
type Op string

const (
	// OpAdd: the pod has these addresses; answer once they are in force
	// (the transaction that holds the pod's rules, or the fact that
	// nothing isolates it, is committed).
	OpAdd Op = "add"
	// OpCheck: the same question as OpAdd, asked again by CNI CHECK; the
	// answer is immediate when the addresses are already in force.
	OpCheck Op = "check"
	// OpDel: forget the addresses of this pod's sandbox.
	OpDel Op = "del"
)

// Request is one question of the plugin; one per connection.
type Request struct {
	Op        Op           `json:"op"`
	Namespace string       `json:"namespace"`
	Name      string       `json:"name"`
	IPs       []netip.Addr `json:"ips,omitempty"`
}

// Reply is the agent's answer. Error is empty on success.
type Reply struct {
	Error string `json:"error,omitempty"`
}

// Ask sends req to the agent at socket and waits for its reply until ctx
// ends. An error wraps the cause: a dial error (the agent is not there),
// a timeout, or the agent's own refusal.
func Ask(ctx context.Context, socket string, req Request) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return &AbsentError{Socket: socket, Err: err}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return fmt.Errorf("sending %s to the agent at %s: %w", req.Op, socket, err)
	}
	var rep Reply
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&rep); err != nil {
		return fmt.Errorf("waiting for the agent at %s to answer %s for pod %s/%s: %w", socket, req.Op, req.Namespace, req.Name, err)
	}
	if rep.Error != "" {
		return fmt.Errorf("agent at %s: %s", socket, rep.Error)
	}
	return nil
}

// AbsentError is a failed dial: no agent listens on the socket.
type AbsentError struct {
	Socket string
	Err    error
}

func (e *AbsentError) Error() string {
	return fmt.Sprintf("no nftpol agent listens on %s: %v", e.Socket, e.Err)
}

func (e *AbsentError) Unwrap() error { return e.Err }

// ReadRequest reads one request from a connection the agent accepted,
// within timeout.
func ReadRequest(conn net.Conn, timeout time.Duration) (Request, error) {
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	var req Request
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&req); err != nil {
		return req, fmt.Errorf("reading a request: %w", err)
	}
	_ = conn.SetReadDeadline(time.Time{})
	switch req.Op {
	case OpAdd, OpCheck, OpDel:
	default:
		return req, fmt.Errorf("unknown op %q", req.Op)
	}
	if req.Namespace == "" || req.Name == "" {
		return req, fmt.Errorf("%s without a pod namespace and name", req.Op)
	}
	if req.Op != OpDel && len(req.IPs) == 0 {
		return req, fmt.Errorf("%s for pod %s/%s without addresses", req.Op, req.Namespace, req.Name)
	}
	return req, nil
}

// WriteReply answers a request; err nil is success.
func WriteReply(conn net.Conn, err error) error {
	var rep Reply
	if err != nil {
		rep.Error = err.Error()
	}
	_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	return json.NewEncoder(conn).Encode(rep)
}
