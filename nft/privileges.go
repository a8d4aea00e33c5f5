package nft

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// capNetAdmin is the bit of CAP_NET_ADMIN in the capability sets.
const capNetAdmin = 12

// CheckPrivileges returns a one-line error when this process lacks
// CAP_NET_ADMIN, without which no nftables change can be committed. The
// agent checks it at start so that a missing capability is a clear reason
// to exit, not a stream of failed syncs.
func CheckPrivileges() error {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return fmt.Errorf("reading own capabilities: %w", err)
	}
	defer f.Close()
	return checkCapEff(f)
}

func checkCapEff(r io.Reader) error {
	scanner := bufio.NewScanner(r)
	for scanner.Scan() {
		value, ok := strings.CutPrefix(scanner.Text(), "CapEff:")
		if !ok {
			continue
		}
		caps, err := strconv.ParseUint(strings.TrimSpace(value), 16, 64)
		if err != nil {
			return fmt.Errorf("parsing CapEff %q: %w", value, err)
		}
		if caps&(1<<capNetAdmin) == 0 {
			return errors.New("missing capability CAP_NET_ADMIN: run as root or grant NET_ADMIN")
		}
		return nil
	}
	if err := scanner.Err(); err != nil {
		return fmt.Errorf("reading own capabilities: %w", err)
	}
	return errors.New("no CapEff line in /proc/self/status")
}

// CheckNFTables asks the kernel of the network namespace at netnsPath ("" is
// our own) for its inet tables, one read-only netlink request, and returns
// a one-line error when nf_tables cannot be used there. Without it the
// agent would only ever report failed syncs; the probe makes a node whose
// kernel lacks nf_tables a clear reason to exit at start.
func CheckNFTables(netnsPath string) error {
	var opts []nftables.ConnOption
	if netnsPath != "" {
		f, err := os.Open(netnsPath)
		if err != nil {
			return fmt.Errorf("opening network namespace %s: %w", netnsPath, err)
		}
		defer f.Close()
		opts = append(opts, nftables.WithNetNSFd(int(f.Fd())))
	}
	c, err := nftables.New(opts...)
	if err == nil {
		_, err = c.ListTablesOfFamily(nftables.TableFamilyINet)
	}
	return classifyNFTablesError(err)
}

// classifyNFTablesError turns the error of the probe into the reason an
// operator can act on.
func classifyNFTablesError(err error) error {
	switch {
	case err == nil:
		return nil
	// No netfilter netlink at all (socket: EPROTONOSUPPORT), or nfnetlink
	// without the nf_tables subsystem: the kernel answers a request to
	// an unknown subsystem with EINVAL (EOPNOTSUPP in a batch), after
	// trying to load the module.
	case errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.EAFNOSUPPORT),
		errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("probing nftables: nf_tables is not available in this kernel (load the nf_tables module, or use a kernel built with CONFIG_NF_TABLES and CONFIG_NF_TABLES_INET): %w", err)
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("probing nftables: permission denied (CAP_NET_ADMIN is needed in the user namespace that owns the network namespace): %w", err)
	default:
		return fmt.Errorf("probing nftables: %w", err)
	}
}
