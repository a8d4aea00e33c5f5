package nft

import (
	"encoding/binary"
	"os"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// BenchmarkConcatSetChange measures what one-lookup layouts would cost the
// kernel: a set keyed by (peer address . l4proto . dport), the shape that
// would hold an isolation group's allowed peers and ports, holding 100k
// elements, as a hash set (single addresses: pod peers) and as an interval
// set (the pipapo backend, needed for ipBlock ranges), which the kernel
// rebuilds on every change. It reports the full load of the 100k elements
// (one transaction) and, per iteration, one element added and removed
// again (two transactions). Written with google/nftables directly: nftpol
// has no such set kind yet.
func BenchmarkConcatSetChange(b *testing.B) {
	const size = 100_000
	for _, tc := range []struct {
		name     string
		interval bool
	}{{"hash-100k", false}, {"interval-100k", true}} {
		b.Run(tc.name, func(b *testing.B) {
			f, err := os.Open(testNetns(b))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			c, err := nftables.New(nftables.WithNetNSFd(int(f.Fd())), nftables.WithSockOptions(raiseBuffers))
			if err != nil {
				b.Fatal(err)
			}
			table := c.AddTable(&nftables.Table{Name: "nftpol-concat", Family: nftables.TableFamilyINet})
			set := &nftables.Set{Table: table, Name: "allowed", Interval: tc.interval, Concatenation: tc.interval,
				KeyType: nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)}
			elem := func(i int) nftables.SetElement {
				k := make([]byte, 12)
				binary.BigEndian.PutUint32(k[0:], 0x0a000000+uint32(2*i)) // 10.x, never two adjacent
				k[4] = unix.IPPROTO_TCP
				binary.BigEndian.PutUint16(k[8:], uint16(80+i%5))
				if tc.interval {
					return nftables.SetElement{Key: k, KeyEnd: k}
				}
				return nftables.SetElement{Key: k}
			}
			if err := c.AddSet(set, nil); err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			for lo := 0; lo < size; lo += 1000 {
				batch := make([]nftables.SetElement, 0, 1000)
				for i := lo; i < lo+1000; i++ {
					batch = append(batch, elem(i))
				}
				if err := c.SetAddElements(set, batch); err != nil {
					b.Fatal(err)
				}
			}
			if err := c.Flush(); err != nil {
				b.Fatalf("loading %d elements: %v", size, err)
			}
			load := time.Since(start)
			one := []nftables.SetElement{elem(size + 1)}
			for b.Loop() {
				if err := c.SetAddElements(set, one); err != nil {
					b.Fatal(err)
				}
				if err := c.Flush(); err != nil {
					b.Fatal(err)
				}
				if err := c.SetDeleteElements(set, one); err != nil {
					b.Fatal(err)
				}
				if err := c.Flush(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(load.Seconds()*1000, "load-ms")
			c.DelTable(table)
			if err := c.Flush(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
