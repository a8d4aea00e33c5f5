package controllers

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/test/kerneltest"
)

// benchModel: localPods pods (10.1.x.y) isolated for ingress by one
// policy that allows the sources in one address set: the first
// allowedPeers addresses of 10.2.0.0/16.
func benchModel(localPods, allowedPeers int) *selectors.Model {
	m := &selectors.Model{
		Policies: []selectors.PolicyRules{{Key: "ns/allow", HasIngress: true, Ingress: []selectors.Rule{{
			Peers: selectors.PeerMatch{Sets: []string{"peers"}}, Ports: selectors.PortMatch{All: true}}}}},
	}
	set := selectors.AddrSet{ID: "peers"}
	for i := 0; i < allowedPeers; i++ {
		set.Addrs = append(set.Addrs, netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}))
	}
	m.AddrSets = []selectors.AddrSet{set}
	for i := 0; i < localPods; i++ {
		m.Pods = append(m.Pods, selectors.PodRules{Key: fmt.Sprintf("ns/p%d", i),
			IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)})}, Ingress: []string{"ns/allow"}})
	}
	return m
}

// benchFlow is the i-th conntrack entry: UDP from 10.2.0.0/16 to one of
// the local pods; one in every deniedEvery comes from outside the
// allowed peers.
func benchFlow(i, localPods, allowedPeers, deniedEvery int) conntrack.Flow {
	src := i % allowedPeers
	if i%deniedEvery == 0 {
		src = allowedPeers + i%1000
	}
	dst := i % localPods
	f := conntrack.NewFlow(17, 0,
		netip.AddrFrom4([4]byte{10, 2, byte(src >> 8), byte(src)}),
		netip.AddrFrom4([4]byte{10, 1, byte(dst >> 8), byte(dst)}),
		uint16(10000+i/localPods), 53, 600, 0)
	return f
}

// flowTable makes a network namespace for one test and a function that
// writes into its conntrack table the entries benchFlow(i, ...) for the
// i < entries that want selects.
func flowTable(tb testing.TB, entries, localPods, allowedPeers, deniedEvery int) (netns string, create func(want func(i int) bool)) {
	tb.Helper()
	netns = kerneltest.Netns(tb, flowsNetnsPrefix)
	ns, err := os.Open(netns)
	if err != nil {
		tb.Fatal(err)
	}
	defer ns.Close()
	conn, err := conntrack.Dial(&netlink.Config{NetNS: int(ns.Fd())})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return netns, func(want func(i int) bool) {
		for i := range entries {
			if !want(i) {
				continue
			}
			if err := conn.Create(benchFlow(i, localPods, allowedPeers, deniedEvery)); err != nil {
				tb.Fatalf("creating conntrack entry %d: %v", i, err)
			}
		}
	}
}

// BenchmarkFlowCut100k measures one sweep of the flow cutter (dump the
// conntrack table, decide every entry with the model, delete the denied
// ones) over 100k entries of a test namespace, 10 % of them denied, started
// with Sweep as the sync loop starts it: ns/op is the sweep, on its
// goroutine; sync-wait-us the time Sweep took to return, all the sync
// loop waits. The entries are made through conntrack netlink; the deleted
// ones are made again between iterations, outside the timer.
func BenchmarkFlowCut100k(b *testing.B) {
	const entries, localPods, allowedPeers, deniedEvery = 100_000, 1000, 5000, 10
	netns, create := flowTable(b, entries, localPods, allowedPeers, deniedEvery)
	create(func(int) bool { return true })
	model := benchModel(localPods, allowedPeers)
	cutter := &FlowCutter{NetNSPath: netns, noPickups: true}
	type outcome struct {
		st  FlowCutStats
		err error
	}
	outcomes := make(chan outcome, 1)
	report := func(st FlowCutStats, err error) { outcomes <- outcome{st, err} }
	var wait time.Duration
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		start := time.Now()
		cutter.Sweep(model, report)
		wait += time.Since(start)
		o := <-outcomes
		st, err := o.st, o.err
		if err != nil {
			b.Fatal(err)
		}
		if st.Entries != entries || st.Cut != entries/deniedEvery {
			b.Fatalf("sweep saw %d entries and cut %d, want %d and %d", st.Entries, st.Cut, entries, entries/deniedEvery)
		}
		b.StopTimer()
		create(func(i int) bool { return i%deniedEvery == 0 })
		b.StartTimer()
	}
	b.ReportMetric(float64(wait.Microseconds())/float64(b.N), "sync-wait-us")
	b.ReportMetric(float64(entries), "entries/op")
	b.ReportMetric(float64(entries/deniedEvery), "cut/op")
}

// BenchmarkFlowDecidePhaseChange measures deciding the entries of a sweep
// after BenchmarkPacketPath's phase change to C: 16,000 TCP entries from
// one client to a server that 1,000 policies select, the client allowed by
// the last, differing only in the source port (a connect benchmark's
// TIME_WAIT entries). "each entry" decides every entry with the model, as
// sweeps did; "each connection" is the sweep's flowDecider. ns/op is one
// sweep's decisions.
func BenchmarkFlowDecidePhaseChange(b *testing.B) {
	const policies, entries = 1000, 16_000
	client, server := netip.MustParseAddr("10.2.0.1"), netip.MustParseAddr("10.1.0.1")
	m := &selectors.Model{}
	var keys []string
	for i := range policies {
		id := fmt.Sprintf("peers-%d", i)
		peer := netip.AddrFrom4([4]byte{10, 3, byte(i >> 8), byte(i)})
		if i == policies-1 {
			peer = client
		}
		m.AddrSets = append(m.AddrSets, selectors.AddrSet{ID: id, Addrs: []netip.Addr{peer}})
		key := fmt.Sprintf("srv/p%04d", i)
		m.Policies = append(m.Policies, selectors.PolicyRules{Key: key, HasIngress: true, Ingress: []selectors.Rule{{
			Peers: selectors.PeerMatch{Sets: []string{id}},
			Ports: selectors.PortMatch{Ranges: []selectors.PortRange{{Protocol: selectors.ProtocolTCP, First: 80, Last: 80}}}}}})
		keys = append(keys, key)
	}
	m.Pods = []selectors.PodRules{{Key: "srv/server", IPs: []netip.Addr{server}, Ingress: keys}}
	flows := make([]conntrack.Flow, entries)
	for i := range flows {
		flows[i] = conntrack.NewFlow(6, 0, client, server, uint16(10000+i), 80, 60, 0)
	}
	for _, bc := range []struct {
		name   string
		denied func(d *flowDecider, f *conntrack.Flow) bool
	}{
		{"each entry", func(d *flowDecider, f *conntrack.Flow) bool {
			return !d.Allowed(f.TupleOrig.IP.SourceAddress, f.TupleReply.IP.SourceAddress, selectors.ProtocolTCP, f.TupleReply.Proto.SourcePort)
		}},
		{"each connection", func(d *flowDecider, f *conntrack.Flow) bool { return d.denied(nil, f) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				d := newFlowDecider(m)
				for i := range flows {
					if bc.denied(d, &flows[i]) {
						b.Fatal("the client's connection is denied")
					}
				}
			}
		})
	}
}
