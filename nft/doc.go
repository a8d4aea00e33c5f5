// Package nft owns the kernel side: it compiles a selectors.Model into the
// desired content of one nftables table, diffs it against what it last
// committed, and commits the difference as one netlink transaction through
// github.com/google/nftables. It reads the table back from the kernel to
// verify it and repairs drift by replacing the whole table atomically.
//
// It never touches any other table and never runs the nft binary. It knows
// nothing of Kubernetes objects.
package nft
