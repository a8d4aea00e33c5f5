package nft

import (
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// The table lock makes sure one process at a time programs table inet
// <table> in a network namespace. Two agents on one node (a stuck old pod
// next to its replacement, a second install) would otherwise replace each
// other's table at every verification and fight over the NFLOG group.
//
// The lock is a listening unix socket with an abstract name,
// "@nftpol/<table>", bound inside the network namespace the agent
// programs:
//   - abstract names live in the network namespace, not in a file system,
//     so agents in different containers of one node (hostNetwork) meet,
//     nothing needs a writable or shared host path, and namespaces the
//     tests create have locks of their own;
//   - the kernel releases the name when the last descriptor closes, so a
//     holder that dies (even by SIGKILL or the OOM killer) frees the lock
//     at once and a stale lock cannot exist;
//   - a waiter that connects learns the holder's pid from SO_PEERCRED.

// LockedError is returned by TryLockTable when another process holds the
// table's lock.
type LockedError struct {
	Table string
	// PID is the holder's process id as seen from our pid namespace; 0
	// when unknown (the holder runs in a pid namespace we cannot see, as
	// another pod does).
	PID int32
}

func (e *LockedError) Error() string {
	holder := "pid unknown"
	if e.PID > 0 {
		holder = fmt.Sprintf("pid %d", e.PID)
	}
	return fmt.Sprintf("another nftpol agent holds table inet %s in this network namespace (%s)", e.Table, holder)
}

// LockName is the abstract unix socket name of a table's lock ('@' is
// Go's spelling of the leading NUL byte of abstract names).
func LockName(table string) string {
	return "@nftpol/" + table
}

// TableLock is a held table lock. Close releases it.
type TableLock struct {
	ln       net.Listener
	acceptor sync.WaitGroup
	once     sync.Once
	closeErr error
}

// TryLockTable takes the lock of table inet <table> in the network
// namespace at netnsPath ("" is our own) without waiting. When another
// process holds it, the error is a *LockedError.
func TryLockTable(netnsPath, table string) (*TableLock, error) {
	if table == "" {
		return nil, errors.New("locking the table: empty table name")
	}
	var ln net.Listener
	var holder int32
	err := runInNetns(netnsPath, func() error {
		var err error
		ln, err = net.Listen("unix", LockName(table))
		if err == nil {
			return nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) {
			return fmt.Errorf("binding %s: %w", LockName(table), err)
		}
		holder = lockHolder(table)
		return &LockedError{Table: table, PID: holder}
	})
	if err != nil {
		return nil, err
	}
	l := &TableLock{ln: ln}
	// Waiters connect to learn the holder's pid; accept and close their
	// connections so the backlog never fills (a full backlog would make a
	// waiter's connect block).
	l.acceptor.Add(1)
	go func() {
		defer l.acceptor.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed
			}
			_ = c.Close()
		}
	}()
	return l, nil
}

// Close releases the lock. It is safe to call more than once.
func (l *TableLock) Close() error {
	l.once.Do(func() {
		l.closeErr = l.ln.Close()
		l.acceptor.Wait()
	})
	return l.closeErr
}

// lockHolder returns the pid of the process listening on the table's lock
// socket in the current thread's network namespace, or 0 if unknown.
func lockHolder(table string) int32 {
	c, err := net.Dial("unix", LockName(table))
	if err != nil {
		return 0
	}
	defer c.Close()
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return 0
	}
	return cred.Pid
}

// runInNetns runs fn on an OS thread inside the network namespace at path
// ("" runs fn right here). Sockets fn creates stay in that namespace for
// their whole life, whatever thread uses them later. The thread that
// entered the namespace is never given back to the scheduler: its
// goroutine ends while still locked to it, so the runtime terminates the
// thread, and no other goroutine can ever run in the wrong namespace.
func runInNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	ns, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	defer ns.Close()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread, on purpose: see above.
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("entering network namespace %s: %w", path, err)
			return
		}
		done <- fn()
	}()
	return <-done
}
