package controllers

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"

	"github.com/nftpol/nftpol/nft"
)

// TableLocker tries once, without waiting, to take the lock that makes
// this agent the only one programming its table (nft.TryLockTable). It
// returns what releases the lock, or an error saying who holds it.
type TableLocker func() (io.Closer, error)

// DefaultLockRetryInterval is how often a waiting agent tries the lock
// again: the takeover after the holder dies costs at most this.
const DefaultLockRetryInterval = time.Second

// tableGuard takes the table lock before the agent touches the table or
// the NFLOG group, and holds it until the agent has stopped. While it
// waits, liveness passes (the agent is healthy, restarting it would only
// wait again) and readiness says what it waits for.
type tableGuard struct {
	try      TableLocker
	interval time.Duration
	log      logr.Logger

	// held is closed once the lock is taken.
	held chan struct{}
	// waiting is why the guard is waiting; nil once held.
	waiting atomic.Pointer[string]
}

func newTableGuard(try TableLocker, interval time.Duration, log logr.Logger) *tableGuard {
	if interval <= 0 {
		interval = DefaultLockRetryInterval
	}
	g := &tableGuard{try: try, interval: interval, log: log, held: make(chan struct{})}
	msg := "waiting for the table lock"
	g.waiting.Store(&msg)
	return g
}

// wait blocks until the lock is held or ctx ends; it reports whether the
// lock is held.
func (g *tableGuard) wait(ctx context.Context) bool {
	if g == nil {
		return true
	}
	select {
	case <-g.held:
		return true
	case <-ctx.Done():
		return false
	}
}

// ready fails while the lock is not held.
func (g *tableGuard) ready() error {
	if g == nil {
		return nil
	}
	if msg := g.waiting.Load(); msg != nil {
		return errors.New(*msg)
	}
	return nil
}

// run tries the lock every interval until it is held or ctx ends, then
// holds it until release is closed. Every attempt is bounded (one bind,
// one connect), and the loop ends with ctx.
func (g *tableGuard) run(ctx context.Context, release <-chan struct{}) {
	var lastReason string
	for {
		lock, err := g.try()
		if err == nil {
			g.waiting.Store(nil)
			close(g.held)
			if lastReason != "" {
				g.log.Info("took the table lock; starting")
			}
			<-release
			if err := lock.Close(); err != nil {
				g.log.Error(err, "releasing the table lock")
			}
			return
		}
		if reason := err.Error(); reason != lastReason {
			// Logged when the holder changes, not every second.
			var locked *nft.LockedError
			if errors.As(err, &locked) {
				g.log.Info(reason + "; waiting")
			} else {
				g.log.Error(err, "taking the table lock; retrying")
			}
			lastReason = reason
		}
		msg := fmt.Sprintf("waiting for the table lock: %v", err)
		g.waiting.Store(&msg)
		select {
		case <-ctx.Done():
			return
		case <-time.After(g.interval):
		}
	}
}
