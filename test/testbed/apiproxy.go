package testbed

import (
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/tools/clientcmd"
)

// APIProxy stands between agents and the API server: a TCP relay on
// loopback whose kubeconfig agents use instead of the control plane's. Cut
// makes the API server unreachable for them (connections reset, new ones
// refused) while the test itself keeps writing to the API server; Restore
// brings the same address back. TLS passes through untouched.
type APIProxy struct {
	// Kubeconfig is the path of a kubeconfig that reaches the API server
	// through the proxy.
	Kubeconfig string

	addr     string
	upstream string

	// sent counts the bytes relayed from the API server to the agents.
	sent atomic.Int64

	mu       sync.Mutex
	listener net.Listener
	conns    map[net.Conn]struct{}
	wg       sync.WaitGroup
}

// StartAPIProxy starts a proxy to cp's API server, with its kubeconfig in
// dir.
func StartAPIProxy(cp *ControlPlane, dir string) (*APIProxy, error) {
	u, err := url.Parse(cp.Config.Host)
	if err != nil {
		return nil, fmt.Errorf("parsing the API server address %q: %w", cp.Config.Host, err)
	}
	p := &APIProxy{upstream: u.Host, conns: map[net.Conn]struct{}{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("listening for the API proxy: %w", err)
	}
	p.addr = l.Addr().String()
	p.serve(l)

	cfg, err := clientcmd.LoadFromFile(cp.Kubeconfig)
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("reading the kubeconfig: %w", err)
	}
	for _, c := range cfg.Clusters {
		c.Server = "https://" + p.addr
	}
	p.Kubeconfig = filepath.Join(dir, "kubeconfig-via-proxy")
	if err := clientcmd.WriteToFile(*cfg, p.Kubeconfig); err != nil {
		p.Close()
		return nil, fmt.Errorf("writing the proxy kubeconfig: %w", err)
	}
	return p, nil
}

// StartAPIProxyT starts a proxy for a test and closes it at the end.
func StartAPIProxyT(t testing.TB, cp *ControlPlane) *APIProxy {
	t.Helper()
	p, err := StartAPIProxy(cp, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

func (p *APIProxy) serve(l net.Listener) {
	p.mu.Lock()
	p.listener = l
	p.mu.Unlock()
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return // closed by Cut or Close
			}
			p.relay(c)
		}
	}()
}

func (p *APIProxy) relay(client net.Conn) {
	server, err := net.DialTimeout("tcp", p.upstream, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	p.mu.Lock()
	if p.listener == nil { // cut meanwhile
		p.mu.Unlock()
		client.Close()
		server.Close()
		return
	}
	p.conns[client], p.conns[server] = struct{}{}, struct{}{}
	p.mu.Unlock()
	pipe := func(dst, src net.Conn, w io.Writer) {
		defer p.wg.Done()
		_, _ = io.Copy(w, src)
		// One direction ended: end both, as a peer going away would.
		dst.Close()
		src.Close()
		p.mu.Lock()
		delete(p.conns, dst)
		delete(p.conns, src)
		p.mu.Unlock()
	}
	p.wg.Add(2)
	go pipe(server, client, server)
	// Counted as it flows: a watch is one long response.
	go pipe(client, server, countingWriter{client, &p.sent})
}

// countingWriter counts what it writes.
type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(b []byte) (int, error) {
	n, err := c.w.Write(b)
	c.n.Add(int64(n))
	return n, err
}

// BytesSent returns how many bytes the proxy relayed from the API server
// to its clients so far (TLS records: the encoded objects plus a few
// percent of framing and HTTP/2 headers).
func (p *APIProxy) BytesSent() int64 { return p.sent.Load() }

// Cut closes the listener and every relayed connection: from now on the
// agents' connections to the API server are refused.
func (p *APIProxy) Cut() {
	p.mu.Lock()
	if p.listener != nil {
		p.listener.Close()
		p.listener = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// Restore listens again on the same address (retrying for up to 5 s if the
// port is briefly unavailable).
func (p *APIProxy) Restore() error {
	deadline := time.Now().Add(5 * time.Second)
	for attempt := 0; ; attempt++ {
		l, err := net.Listen("tcp", p.addr)
		if err == nil {
			p.serve(l)
			return nil
		}
		if time.Now().After(deadline) || attempt >= 100 {
			return fmt.Errorf("listening again on %s: %w", p.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close cuts the proxy for good, waits for its goroutines and removes the
// kubeconfig.
func (p *APIProxy) Close() {
	p.Cut()
	p.wg.Wait()
	if p.Kubeconfig != "" {
		_ = os.Remove(p.Kubeconfig)
	}
}
