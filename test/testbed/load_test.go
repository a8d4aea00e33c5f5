package testbed

import (
	"context"
	"testing"
	"time"
)

// TestLoad runs the load generators briefly across two nodes with no
// agent: they count, they report a refused connection as an error, and a
// stopped sink no longer accepts.
func TestLoad(t *testing.T) {
	_, _, pods := smallBed(t)
	ctx := context.Background()
	from, to := pods[0], pods[1] // x/a on node 1, x/b on node 2
	for _, family := range []int{4, 6} {
		conns, err := ConnectRate(ctx, from, to.Addr(family), 80, 2, 300*time.Millisecond)
		if err != nil || conns == 0 {
			t.Fatalf("IPv%d connect rate: %d connections, %v", family, conns, err)
		}
		t.Logf("IPv%d: %d connections in 300ms", family, conns)
	}
	if conns, err := ConnectRate(ctx, from, to.IPv4, 5999, 2, 300*time.Millisecond); err == nil || conns != 0 {
		t.Fatalf("connections to a port nobody serves: %d, %v", conns, err)
	}

	stop, err := StartSink(to, 5201)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	for _, family := range []int{4, 6} {
		rate, err := Throughput(ctx, from, to.Addr(family), 5201, 300*time.Millisecond)
		if err != nil || rate <= 0 {
			t.Fatalf("IPv%d throughput: %.0f B/s, %v", family, rate, err)
		}
		t.Logf("IPv%d: %.1f MB/s", family, rate/1e6)
	}
	stop()
	if _, err := Throughput(ctx, from, to.IPv4, 5201, 100*time.Millisecond); err == nil {
		t.Fatal("a stopped sink still accepts")
	}
}
