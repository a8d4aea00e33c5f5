package cluster

import "testing"

// The leftover sweep must never take another package's namespaces, even
// when their names start with the cluster's prefix.
func TestOwnNetns(t *testing.T) {
	own := ownNetns("nftpol")
	for name, want := range map[string]bool{
		"nftpol-lan":             true,
		"nftpol-n1":              true,
		"nftpol-n12":             true,
		"nftpol-p2-0123456789ab": true,
		"nftpol-demo-n1":         false,
		"nftpol-main-dump-1a2b":  false,
		"nftpol-n1-extra":        false,
		"nftpol-p2-0123456789":   false,
		"nftpolx-n1":             false,
		"nftpol-nft-0a1b2c3d":    false,
	} {
		if got := own.MatchString(name); got != want {
			t.Errorf("%s: own %v, want %v", name, got, want)
		}
	}
}
