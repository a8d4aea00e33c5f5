package testbed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Load generators for measuring the packet path: a new-connection rate
// against a pod's servers, and a long flow's throughput into a sink. Both
// run strictly between pod namespaces; what they measure is the kernel
// path (pod, node, node, pod) with whatever table the nodes hold.

const (
	// loadConnTimeout bounds one connection (connect and answer): a
	// connection the path drops fails fast instead of stalling a worker.
	loadConnTimeout = time.Second
	// maxConnsPerWorker bounds a ConnectRate worker whatever its window.
	maxConnsPerWorker = 1 << 22
	// loadWriteSize is the write size of Throughput: large enough that
	// the syscall cost does not hide the path's.
	loadWriteSize = 64 << 10
	// maxThroughputWrites bounds a Throughput flow (1 TiB of writes).
	maxThroughputWrites = 1 << 24
	// sinkReadSize is the read size of a sink.
	sinkReadSize = 256 << 10
	// drainTimeout is how long Throughput waits, after its window, for the
	// sink to read what is still queued.
	drainTimeout = 10 * time.Second
)

// ConnectRate opens TCP connections from a pod to to:port with workers
// parallel loops for d and returns how many succeeded. One unit is a full
// connection: connect, read the server's answer up to its close (the pod
// servers write their identity and close), close. Reading to the server's
// close leaves TIME_WAIT on the server's side, so the client's ephemeral
// ports never run out however long the window. The first failed
// connection stops every worker and is returned with the count so far.
func ConnectRate(ctx context.Context, from *Pod, to netip.Addr, port int, workers int, d time.Duration) (conns int, err error) {
	if workers <= 0 {
		return 0, fmt.Errorf("connect rate: %d workers", workers)
	}
	addr := net.JoinHostPort(to.String(), strconv.Itoa(port))
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	end := time.Now().Add(d)
	var total atomic.Int64
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The worker's whole loop runs on the thread inside the pod's
			// namespace, so every socket it dials is the pod's.
			errs[w] = inNetns(from.NetNSPath, func() error {
				dialer := net.Dialer{Timeout: loadConnTimeout}
				buf := make([]byte, 512)
				for i := 0; i < maxConnsPerWorker && time.Now().Before(end); i++ {
					if err := connectOnce(wctx, &dialer, addr, buf); err != nil {
						if wctx.Err() != nil {
							// Stopped by a sibling's failure or the caller.
							return nil
						}
						cancel()
						return fmt.Errorf("connection %d of worker %d to %s: %w", i+1, w, addr, err)
					}
					total.Add(1)
				}
				return nil
			})
		}()
	}
	wg.Wait()
	err = errors.Join(errs...)
	if err == nil {
		err = ctx.Err()
	}
	return int(total.Load()), err
}

// connectOnce is one connection of ConnectRate.
func connectOnce(ctx context.Context, dialer *net.Dialer, addr string, buf []byte) error {
	c, err := dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(loadConnTimeout))
	n := 0
	// The answer is one short line; a few reads see it and the close.
	for range 16 {
		k, err := c.Read(buf)
		n += k
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading the answer: %w", err)
		}
	}
	if n == 0 {
		return errors.New("the server closed without answering")
	}
	return nil
}

// sink is a TCP server in a pod that reads and discards.
type sink struct {
	l        net.Listener
	mu       sync.Mutex
	conns    map[net.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
	stopOnce sync.Once
}

// StartSink listens on TCP port in the pod's namespace (IPv4 and IPv6)
// and reads and discards whatever its clients send; it closes a
// connection once the client has closed its side, which tells Throughput
// that everything sent was read. stop closes the listener and every
// connection and waits for their goroutines; it may be called twice.
func StartSink(pod *Pod, port int) (stop func(), err error) {
	var l net.Listener
	err = inNetns(pod.NetNSPath, func() error {
		var err error
		l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("starting a sink on tcp/%d in %s: %w", port, pod.Key(), err)
	}
	s := &sink{l: l, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.accept()
	return s.stop, nil
}

func (s *sink) accept() {
	defer s.wg.Done()
	// Ends when stop closes the listener; any other accept error ends it
	// too, and the next client's connection fails loudly.
	for {
		c, err := s.l.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			_ = c.Close()
			return
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.discard(c)
	}
}

func (s *sink) discard(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		_ = c.Close()
	}()
	buf := make([]byte, sinkReadSize)
	// Ends at the client's close (EOF) or when stop closes c.
	for {
		if _, err := c.Read(buf); err != nil {
			return
		}
	}
}

func (s *sink) stop() {
	s.stopOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		_ = s.l.Close()
		for c := range s.conns {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
}

// Throughput sends 64 KiB writes from a pod to a sink (StartSink) at
// to:port for d over one connection and returns the bytes per second the
// sink read. The clock stops when the sink has read everything: after the
// window the client closes its side and waits for the sink's close, so
// bytes still queued in socket buffers are neither counted early nor
// lost.
func Throughput(ctx context.Context, from *Pod, to netip.Addr, port int, d time.Duration) (bytesPerSec float64, err error) {
	addr := net.JoinHostPort(to.String(), strconv.Itoa(port))
	err = inNetns(from.NetNSPath, func() error {
		dialer := net.Dialer{Timeout: loadConnTimeout}
		c, err := dialer.DialContext(ctx, "tcp", addr)
		if err != nil {
			return fmt.Errorf("connecting to the sink %s: %w", addr, err)
		}
		tc := c.(*net.TCPConn)
		defer tc.Close()
		// A cancelled caller unblocks a pending write or read at once.
		stopWatch := context.AfterFunc(ctx, func() { _ = tc.SetDeadline(time.Unix(1, 0)) })
		defer stopWatch()
		buf := make([]byte, loadWriteSize)
		start := time.Now()
		end := start.Add(d)
		_ = tc.SetDeadline(end.Add(drainTimeout))
		var sent int64
		for i := 0; i < maxThroughputWrites && time.Now().Before(end); i++ {
			n, err := tc.Write(buf)
			sent += int64(n)
			if err != nil {
				return fmt.Errorf("writing to the sink %s after %d bytes: %w", addr, sent, err)
			}
		}
		if err := tc.CloseWrite(); err != nil {
			return fmt.Errorf("closing the flow to %s: %w", addr, err)
		}
		if n, err := tc.Read(buf[:1]); !errors.Is(err, io.EOF) {
			if err == nil {
				return fmt.Errorf("the sink %s answered %d bytes; it should only read", addr, n)
			}
			return fmt.Errorf("waiting for the sink %s to read %d bytes: %w", addr, sent, err)
		}
		bytesPerSec = float64(sent) / time.Since(start).Seconds()
		return nil
	})
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	return bytesPerSec, err
}
