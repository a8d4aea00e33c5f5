package nft

import (
	"errors"
	"os"
	"testing"

	"github.com/nftpol/nftpol/test/kerneltest"
)

// TestTableLock takes table locks in namespaces the test creates. The
// lock of one table in one namespace is exclusive and names its holder;
// other tables and other namespaces have locks of their own; Close frees
// it at once. (A holder that dies frees it too: main's
// TestSecondAgentWaitsForTheTableLock kills a real agent.)
func TestTableLock(t *testing.T) {
	kerneltest.Require(t)
	nsA := kerneltest.Netns(t, "nftpol-lock")
	nsB := kerneltest.Netns(t, "nftpol-lock")

	first, err := TryLockTable(nsA, "nftpol")
	if err != nil {
		t.Fatalf("first lock: %v", err)
	}
	defer first.Close()

	tests := []struct {
		name       string
		netns      string
		table      string
		wantLocked bool
	}{
		{"same table, same namespace", nsA, "nftpol", true},
		{"other table, same namespace", nsA, "other", false},
		{"same table, other namespace", nsB, "nftpol", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := TryLockTable(tt.netns, tt.table)
			if !tt.wantLocked {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if err := l.Close(); err != nil {
					t.Fatalf("close: %v", err)
				}
				return
			}
			var locked *LockedError
			if !errors.As(err, &locked) {
				t.Fatalf("error = %v, want a *LockedError", err)
			}
			if locked.PID != int32(os.Getpid()) || locked.Table != tt.table {
				t.Fatalf("holder = %+v, want table %s pid %d", locked, tt.table, os.Getpid())
			}
			want := "another nftpol agent holds table inet nftpol in this network namespace (pid "
			if got := err.Error(); len(got) < len(want) || got[:len(want)] != want {
				t.Fatalf("message = %q", got)
			}
		})
	}

	// Waiters connect to learn the pid; many of them must not fill the
	// holder's backlog (connect would then block).
	for i := 0; i < 100; i++ {
		if _, err := TryLockTable(nsA, "nftpol"); err == nil {
			t.Fatal("lock taken twice")
		}
	}

	if err := first.Close(); err != nil {
		t.Fatalf("release: %v", err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	again, err := TryLockTable(nsA, "nftpol")
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := TryLockTable("/nonexistent/netns", "nftpol"); err == nil {
		t.Fatal("lock in a missing namespace succeeded")
	}
}
