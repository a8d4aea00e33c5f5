package nft

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
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
