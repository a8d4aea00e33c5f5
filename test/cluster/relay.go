package cluster

import (
	"errors"
	"io"
	"net"
	"sync"

	"github.com/go-logr/logr"

	"github.com/nftpol/nftpol/test/netnskubelet"
)

// relay makes the API server, which listens on loopback in the root
// namespace, reachable inside another namespace: at the same address in a
// node's namespace, so programs running there (kube-proxy) use the
// cluster's kubeconfig unchanged, and on the control plane's address on
// the shared link, the endpoint of the `kubernetes` Service. The listening
// socket lives in the other namespace, each upstream connection in the
// root one; TLS passes through untouched.
type relay struct {
	l     net.Listener
	log   logr.Logger
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func startRelay(netnsPath, listen, upstream string, log logr.Logger) (*relay, error) {
	l, err := netnskubelet.ListenIn(netnsPath, listen)
	if err != nil {
		return nil, err
	}
	r := &relay{l: l, log: log, conns: map[net.Conn]struct{}{}}
	r.wg.Go(func() {
		for {
			down, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					log.Error(err, "API relay stopped accepting")
				}
				return
			}
			r.wg.Go(func() { r.pipe(down, upstream) })
		}
	})
	return r, nil
}

func (r *relay) track(c net.Conn, add bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.conns == nil {
		return false
	}
	if add {
		r.conns[c] = struct{}{}
	} else {
		delete(r.conns, c)
	}
	return true
}

func (r *relay) pipe(down net.Conn, addr string) {
	defer down.Close()
	up, err := net.Dial("tcp", addr)
	if err != nil {
		r.log.Error(err, "API relay cannot reach the API server")
		return
	}
	defer up.Close()
	if !r.track(down, true) || !r.track(up, true) {
		return
	}
	defer r.track(down, false)
	defer r.track(up, false)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		// Half-close so the other direction can finish its reply.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(up, down)
	go cp(down, up)
	<-done
	<-done
}

// Close stops listening, cuts every open connection and waits for the
// relay's goroutines.
func (r *relay) Close() {
	_ = r.l.Close()
	r.mu.Lock()
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	for c := range conns {
		_ = c.Close()
	}
	r.wg.Wait()
}
