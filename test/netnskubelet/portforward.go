package netnskubelet

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"k8s.io/cri-streaming/pkg/streaming/portforward"
)

// servePortForward is the kubelet's /portForward endpoint (kubectl
// port-forward), SPDY or WebSocket as k8s.io/cri-streaming negotiates.
func (k *Kubelet) servePortForward(w http.ResponseWriter, r *http.Request) {
	opts, err := portforward.NewV4Options(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	key := r.PathValue("namespace") + "/" + r.PathValue("pod")
	portforward.ServePortForward(w, r, k, key, r.PathValue("uid"), opts,
		streamIdleTimeout, streamCreationTimeout, portforward.SupportedProtocols)
}

// PortForward connects stream to port on the pod's loopback, inside its
// network namespace, as the kubelet's runtimes do
// (portforward.PortForwarder).
func (k *Kubelet) PortForward(ctx context.Context, key, uid string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	k.mu.Lock()
	rt := k.pods[key]
	k.mu.Unlock()
	if rt == nil || (uid != "" && string(rt.uid) != uid) {
		return fmt.Errorf("pod %s does not run on node %s", key, k.cfg.NodeName)
	}
	conn, err := DialIn(ctx, rt.netnsPath, "tcp", net.JoinHostPort("localhost", strconv.Itoa(int(port))), 10*time.Second)
	if err != nil {
		return fmt.Errorf("port-forward to %s port %d: %w", key, port, err)
	}
	defer conn.Close()
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(conn, stream)
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}()
	go func() {
		_, _ = io.Copy(stream, conn)
		done <- struct{}{}
	}()
	// One direction ending (the client closed, or the server answered and
	// closed) ends the forward; the deferred closes stop the other.
	select {
	case <-done:
	case <-ctx.Done():
	}
	return nil
}
