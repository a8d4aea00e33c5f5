package test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

// flowPort is where the flow tests' echo servers listen (TCP and UDP).
const flowPort = 7000

// flowBed: a server pod "flows/srv" on the first node, a client that the
// deny policy will cut ("flows/cli", role=bad) and one it keeps allowing
// ("flows/ok", role=ok) on the second, an echo server in srv, an agent
// per node with the default flags (cutting flows is on by default).
type flowBed struct {
	cp            *testbed.ControlPlane
	bed           *testbed.Bed
	srv, cli, ok  *testbed.Pod
	agents        map[string]*testbed.Agent
	srvNode       *testbed.Node
	srvNodeAgent  *testbed.Agent
	srvNodeMetric string
}

func startFlowBed(t *testing.T, agentArgs ...string) *flowBed {
	t.Helper()
	kerneltest.Require(t, kerneltest.ControlPlane)
	cp := testbed.StartControlPlaneT(t)
	bed := testbed.NewT(t, cp, testbed.Options{Prefix: e2ePrefix + "flows", Nodes: 2})
	ctx := context.Background()
	if err := bed.EnsureNamespace(ctx, "flows", map[string]string{"ns": "flows"}); err != nil {
		t.Fatal(err)
	}
	add := func(name, node string, labels map[string]string) *testbed.Pod {
		p, err := bed.AddPod(ctx, testbed.PodSpec{Namespace: "flows", Name: name, Node: node, Labels: labels})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	f := &flowBed{cp: cp, bed: bed, agents: map[string]*testbed.Agent{}}
	f.srv = add("srv", bed.Nodes[0].Name, map[string]string{"app": "srv"})
	f.cli = add("cli", bed.Nodes[1].Name, map[string]string{"role": "bad"})
	f.ok = add("ok", bed.Nodes[1].Name, map[string]string{"role": "ok"})
	startEcho(t, f.srv)
	for _, n := range bed.Nodes {
		f.agents[n.Name] = testbed.StartAgentT(t, cp, n, agentArgs...)
	}
	f.srvNode = bed.Nodes[0]
	f.srvNodeAgent = f.agents[f.srvNode.Name]
	f.srvNodeMetric = "http://" + f.srvNodeAgent.MetricsAddr + "/metrics"
	return f
}

// applyDeny creates the policy "only-ok": srv is isolated for ingress and
// allows only role=ok. It returns when the API server stored it.
func (f *flowBed) applyDeny(t *testing.T) time.Time {
	t.Helper()
	p := withIngress(policy("flows", "only-ok", sel("app", "srv"), ingressOnly), from(podPeer(selPtr("role", "ok"))))
	start := time.Now()
	if _, err := f.cp.Clientset.NetworkingV1().NetworkPolicies("flows").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("creating the deny policy: %v", err)
	}
	return start
}

// removeDeny deletes the policy and waits until cli connects again.
func (f *flowBed) removeDeny(t *testing.T) {
	t.Helper()
	if err := f.cp.Clientset.NetworkingV1().NetworkPolicies("flows").Delete(context.Background(), "only-ok", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting the deny policy: %v", err)
	}
	f.waitProbe(t, f.cli, true)
}

// waitProbe waits (at most 10 s) until a new TCP connection from pod to
// srv succeeds (want) or fails (!want).
func (f *flowBed) waitProbe(t *testing.T, from *testbed.Pod, want bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; i < 100 && time.Now().Before(deadline); i++ {
		err := testbed.Probe(from, f.srv.IPv4, testbed.TCP, 80, f.srv.Key(), 300*time.Millisecond)
		if (err == nil) == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("new connections from %s to %s: want allowed=%v, not reached in 10s", from.Key(), f.srv.Key(), want)
}

// TestFlowsCutOnDeny: a long TCP stream and a UDP flow from cli to srv
// run; a policy that allows only role=ok into srv is created; both stop
// within 1 s (the time from the API write to the last echo is measured),
// while a parallel TCP stream from ok to the same server keeps running
// without one lost echo, and its conntrack entry on srv's node is the same
// entry (same ID) after the cut. The agent's nftpol_flows_cut_total grows
// by exactly the number of entries of cli's connections to srv that
// srv's node held. IPv4 and IPv6, three rounds each.
func TestFlowsCutOnDeny(t *testing.T) {
	f := startFlowBed(t)
	var cuts []time.Duration
	for _, family := range []int{4, 6} {
		for round := 0; round < 3; round++ {
			name := fmt.Sprintf("IPv%d-round%d", family, round)
			t.Run(name, func(t *testing.T) {
				cuts = append(cuts, f.cutRound(t, family))
			})
			if t.Failed() {
				return
			}
		}
	}
	sort.Slice(cuts, func(i, j int) bool { return cuts[i] < cuts[j] })
	t.Logf("cut latency (policy created -> last echo through) over %d rounds: p50 %v, min %v, max %v",
		len(cuts), cuts[len(cuts)/2], cuts[0], cuts[len(cuts)-1])
}

func (f *flowBed) cutRound(t *testing.T, family int) time.Duration {
	dst := f.srv.Addr(family)
	bad := startStream(t, f.cli, dst, "tcp")
	badUDP := startStream(t, f.cli, dst, "udp")
	good := startStream(t, f.ok, dst, "tcp")
	for _, s := range []*stream{bad, badUDP, good} {
		if err := s.waitFlowing(3 * time.Second); err != nil {
			t.Fatal(err)
		}
	}
	before := dumpFlows(t, f.srvNode.NetNSPath)
	var cliEntries int
	for _, e := range before {
		if src := e.TupleOrig.IP.SourceAddress.Unmap(); src == f.cli.IPv4 || src == f.cli.IPv6 {
			if d := e.TupleOrig.IP.DestinationAddress.Unmap(); d == f.srv.IPv4 || d == f.srv.IPv6 {
				cliEntries++
			}
		}
	}
	goodEntry, ok := findFlow(before, good.local, good.remote, 6)
	if !ok {
		t.Fatalf("no conntrack entry of the allowed stream %s -> %s on %s", good.local, good.remote, f.srvNode.Name)
	}
	cutBefore := scrape(t, f.srvNodeMetric)["nftpol_flows_cut_total"]
	goodFailures := good.failures.Load()

	applied := f.applyDeny(t)
	var stalled bool
	for i := 0; i < 100; i++ {
		time.Sleep(50 * time.Millisecond)
		if bad.stalledFor(time.Second) && badUDP.stalledFor(time.Second) {
			stalled = true
			break
		}
	}
	lastTCP, lastUDP := bad.last(), badUDP.last()
	bad.stop()
	badUDP.stop()
	if !stalled {
		t.Fatalf("the denied flows still run 5 s after the policy was created (tcp last echo %v, udp %v after)",
			lastTCP.Sub(applied), lastUDP.Sub(applied))
	}
	cut := lastTCP.Sub(applied)
	if d := lastUDP.Sub(applied); d > cut {
		cut = d
	}
	if cut > time.Second {
		t.Errorf("flows cut %v after the policy was created, want within 1 s", cut)
	}
	// New connections are denied too: the policy is in force.
	f.waitProbe(t, f.cli, false)

	// The allowed stream: no echo lost, the same conntrack entry.
	if err := good.waitFlowing(time.Second); err != nil {
		t.Error(err)
	}
	good.stop()
	if n := good.failures.Load() - goodFailures; n > 0 {
		good.failMu.Lock()
		t.Errorf("the allowed stream lost %d echoes after the policy was created at %s (last: %s)", n, applied.Format("15:04:05.000"), good.lastFailure)
		good.failMu.Unlock()
	}
	after := dumpFlows(t, f.srvNode.NetNSPath)
	if e, ok := findFlow(after, good.local, good.remote, 6); !ok || e.ID != goodEntry.ID {
		t.Errorf("the allowed stream's conntrack entry was touched: before ID %d, after %+v (found %v)", goodEntry.ID, e.ID, ok)
	}
	// Exactly cli's entries were cut.
	cutNow := scrape(t, f.srvNodeMetric)["nftpol_flows_cut_total"]
	if got := int(cutNow - cutBefore); got != cliEntries {
		t.Errorf("nftpol_flows_cut_total grew by %d, want %d (the entries of cli's connections to srv)", got, cliEntries)
	}
	t.Logf("IPv%d: cut %v after the policy (tcp %v, udp %v), %d entries cut", family, cut, lastTCP.Sub(applied), lastUDP.Sub(applied), cliEntries)
	f.removeDeny(t)
	return cut
}

// TestFlowsNotCutWhenDisabled: with --cut-denied-flows=false the same
// policy leaves the established TCP stream running (conntrack accepts it):
// what TestFlowsCutOnDeny sees is the agent's doing. An allowed IPv6
// stream runs next to it without a lost echo.
func TestFlowsNotCutWhenDisabled(t *testing.T) {
	f := startFlowBed(t, "--cut-denied-flows=false")
	bad := startStream(t, f.cli, f.srv.IPv4, "tcp")
	good6 := startStream(t, f.ok, f.srv.IPv6, "tcp")
	if err := bad.waitFlowing(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := good6.waitFlowing(3 * time.Second); err != nil {
		t.Fatal(err)
	}
	g6 := good6.failures.Load()
	f.applyDeny(t)
	defer func() {
		if n := good6.failures.Load() - g6; n > 0 {
			t.Errorf("the allowed IPv6 stream lost %d echoes", n)
		}
	}()
	f.waitProbe(t, f.cli, false)
	time.Sleep(time.Second)
	if err := bad.waitFlowing(time.Second); err != nil {
		t.Errorf("with --cut-denied-flows=false the established stream stopped: %v", err)
	}
	bad.stop()
	if v := scrape(t, f.srvNodeMetric)["nftpol_flows_cut_total"]; v != 0 {
		t.Errorf("nftpol_flows_cut_total = %v with cutting off", v)
	}
}

// stream sends 8 bytes every 5 ms over one connection and reads the echo,
// remembering when the last echo arrived.
type stream struct {
	conn          net.Conn
	local, remote netip.AddrPort
	lastEcho      atomic.Int64 // unix nanoseconds
	failures      atomic.Int64
	// lastFailure is when the last write or read failed, and why.
	failMu      sync.Mutex
	lastFailure string
	done        chan struct{}
	stopOnce    sync.Once
	wg          sync.WaitGroup
}

func startStream(t *testing.T, from *testbed.Pod, to netip.Addr, network string) *stream {
	t.Helper()
	var c net.Conn
	err := testbed.InNetns(from.NetNSPath, func() error {
		var err error
		c, err = net.DialTimeout(network, netip.AddrPortFrom(to, flowPort).String(), 2*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("%s stream from %s to %s: %v", network, from.Key(), to, err)
	}
	s := &stream{conn: c, done: make(chan struct{}),
		local:  netip.MustParseAddrPort(c.LocalAddr().String()),
		remote: netip.MustParseAddrPort(c.RemoteAddr().String())}
	s.local = netip.AddrPortFrom(s.local.Addr().Unmap(), s.local.Port())
	s.wg.Add(1)
	go s.run()
	t.Cleanup(s.stop)
	return s
}

func (s *stream) run() {
	defer s.wg.Done()
	msg := []byte("12345678")
	buf := make([]byte, len(msg))
	// At most 10 minutes of 5 ms rounds; stop ends it long before.
	for i := 0; i < 120000; i++ {
		select {
		case <-s.done:
			return
		case <-time.After(5 * time.Millisecond):
		}
		_ = s.conn.SetDeadline(time.Now().Add(time.Second))
		sent := time.Now()
		if _, err := s.conn.Write(msg); err != nil {
			s.fail(sent, err)
			continue
		}
		if _, err := io.ReadFull(s.conn, buf); err != nil {
			s.fail(sent, err)
			continue
		}
		s.lastEcho.Store(time.Now().UnixNano())
	}
}

func (s *stream) fail(sent time.Time, err error) {
	select {
	case <-s.done:
		return // stop closed the connection under the read
	default:
	}
	s.failures.Add(1)
	s.failMu.Lock()
	s.lastFailure = fmt.Sprintf("sent at %s: %v", sent.Format("15:04:05.000"), err)
	s.failMu.Unlock()
}

func (s *stream) last() time.Time { return time.Unix(0, s.lastEcho.Load()) }

func (s *stream) stalledFor(d time.Duration) bool { return time.Since(s.last()) > d }

// waitFlowing waits until an echo newer than now arrives.
func (s *stream) waitFlowing(timeout time.Duration) error {
	since := time.Now()
	for i := 0; i < 1000; i++ {
		if s.last().After(since) {
			return nil
		}
		if time.Since(since) > timeout {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return fmt.Errorf("stream %s -> %s: no echo within %v", s.local, s.remote, timeout)
}

func (s *stream) stop() {
	s.stopOnce.Do(func() {
		close(s.done)
		_ = s.conn.Close()
		s.wg.Wait()
	})
}

// startEcho serves TCP and UDP echo on flowPort in the pod.
func startEcho(t *testing.T, pod *testbed.Pod) {
	t.Helper()
	var l net.Listener
	var u net.PacketConn
	err := testbed.InNetns(pod.NetNSPath, func() error {
		var err error
		if l, err = net.Listen("tcp", ":"+strconv.Itoa(flowPort)); err != nil {
			return err
		}
		u, err = net.ListenPacket("udp", ":"+strconv.Itoa(flowPort))
		return err
	})
	if err != nil {
		t.Fatalf("echo server in %s: %v", pod.Key(), err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]bool{}
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(c, c)
				_ = c.Close()
			}()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 1500)
		for {
			n, addr, err := u.ReadFrom(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			_, _ = u.WriteTo(buf[:n], addr)
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		_ = u.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// dumpFlows reads the conntrack table of a network namespace.
func dumpFlows(t testing.TB, netnsPath string) []conntrack.Flow {
	t.Helper()
	ns, err := os.Open(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	c, err := conntrack.Dial(&netlink.Config{NetNS: int(ns.Fd())})
	if err != nil {
		t.Fatalf("conntrack netlink: %v", err)
	}
	defer c.Close()
	flows, err := c.Dump(nil)
	if err != nil {
		t.Fatalf("dumping conntrack: %v", err)
	}
	return flows
}

func findFlow(flows []conntrack.Flow, src, dst netip.AddrPort, proto uint8) (conntrack.Flow, bool) {
	for _, f := range flows {
		o := f.TupleOrig
		if o.Proto.Protocol == proto && o.IP.SourceAddress.Unmap() == src.Addr() && o.Proto.SourcePort == src.Port() &&
			o.IP.DestinationAddress.Unmap() == dst.Addr().Unmap() && o.Proto.DestinationPort == dst.Port() {
			return f, true
		}
	}
	return conntrack.Flow{}, false
}
