package netnskubelet

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
)

// sandbox is what a container's processes run in: the pod's network
// namespace and hostname, plus, as a container runtime sets them up, a
// mount namespace of their own with the container's volume mounts bound
// in (the rest of the file system is the host's), a read-only root when
// readOnlyRootFilesystem says so, and the capability bounding set and
// no_new_privs flag its securityContext asks for. The container's
// command, `kubectl exec` and exec probes all start through it, so they
// see the same files and hold the same privileges.
type sandbox struct {
	netnsPath, hostname string
	mounts              []bindMount
	readOnlyRoot        bool
	// allCaps keeps every capability (privileged, or "ALL" added);
	// otherwise caps is the bounding set.
	allCaps    bool
	caps       map[int]bool
	noNewPrivs bool
}

// bindMount is one volume mount: a host directory (or file) bound at the
// container's mount path.
type bindMount struct {
	src, dst string
	readOnly bool
}

// defaultCapabilities are the capabilities container runtimes (containerd,
// CRI-O) give a container that asks for none.
var defaultCapabilities = []string{
	"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
	"SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}

// capabilityNumbers maps capability names, as securityContext spells them
// (without "CAP_"), to their numbers.
var capabilityNumbers = map[string]int{
	"CHOWN": unix.CAP_CHOWN, "DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE, "DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"FOWNER": unix.CAP_FOWNER, "FSETID": unix.CAP_FSETID, "KILL": unix.CAP_KILL, "SETGID": unix.CAP_SETGID,
	"SETUID": unix.CAP_SETUID, "SETPCAP": unix.CAP_SETPCAP, "LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE,
	"NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "NET_BROADCAST": unix.CAP_NET_BROADCAST,
	"NET_ADMIN": unix.CAP_NET_ADMIN, "NET_RAW": unix.CAP_NET_RAW, "IPC_LOCK": unix.CAP_IPC_LOCK,
	"IPC_OWNER": unix.CAP_IPC_OWNER, "SYS_MODULE": unix.CAP_SYS_MODULE, "SYS_RAWIO": unix.CAP_SYS_RAWIO,
	"SYS_CHROOT": unix.CAP_SYS_CHROOT, "SYS_PTRACE": unix.CAP_SYS_PTRACE, "SYS_PACCT": unix.CAP_SYS_PACCT,
	"SYS_ADMIN": unix.CAP_SYS_ADMIN, "SYS_BOOT": unix.CAP_SYS_BOOT, "SYS_NICE": unix.CAP_SYS_NICE,
	"SYS_RESOURCE": unix.CAP_SYS_RESOURCE, "SYS_TIME": unix.CAP_SYS_TIME, "SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG,
	"MKNOD": unix.CAP_MKNOD, "LEASE": unix.CAP_LEASE, "AUDIT_WRITE": unix.CAP_AUDIT_WRITE,
	"AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL, "SETFCAP": unix.CAP_SETFCAP, "MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE,
	"MAC_ADMIN": unix.CAP_MAC_ADMIN, "SYSLOG": unix.CAP_SYSLOG, "WAKE_ALARM": unix.CAP_WAKE_ALARM,
	"BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND, "AUDIT_READ": unix.CAP_AUDIT_READ, "PERFMON": unix.CAP_PERFMON,
	"BPF": unix.CAP_BPF, "CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
}

// newSandbox derives a container's sandbox from its spec; mounts are the
// container's volume mounts already resolved to host paths.
func newSandbox(netnsPath, hostname string, spec corev1.Container, mounts []bindMount) (*sandbox, error) {
	s := &sandbox{netnsPath: netnsPath, hostname: hostname, mounts: mounts, caps: map[int]bool{}}
	sc := spec.SecurityContext
	if sc != nil && sc.Privileged != nil && *sc.Privileged {
		s.allCaps = true
		return s, nil
	}
	names := append([]string{}, defaultCapabilities...)
	if sc != nil {
		s.readOnlyRoot = sc.ReadOnlyRootFilesystem != nil && *sc.ReadOnlyRootFilesystem
		s.noNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
		if sc.Capabilities != nil {
			for _, d := range sc.Capabilities.Drop {
				if strings.EqualFold(string(d), "ALL") {
					names = nil
					continue
				}
				names = slicesDelete(names, capName(d))
			}
			for _, a := range sc.Capabilities.Add {
				names = append(names, capName(a))
			}
		}
	}
	for _, n := range names {
		if strings.EqualFold(n, "ALL") {
			s.allCaps = true
			continue
		}
		num, ok := capabilityNumbers[n]
		if !ok {
			return nil, fmt.Errorf("unknown capability %q", n)
		}
		s.caps[num] = true
	}
	return s, nil
}

func capName(c corev1.Capability) string {
	return strings.TrimPrefix(strings.ToUpper(string(c)), "CAP_")
}

func slicesDelete(names []string, n string) []string {
	out := names[:0]
	for _, x := range names {
		if x != n {
			out = append(out, x)
		}
	}
	return out
}

// start runs start (which forks the container's process) inside the
// sandbox. The namespaces, mounts and dropped capabilities belong to the
// one OS thread that forks, which is then discarded (see onThreadIn):
// nothing of it reaches the kubelet's other threads or the host.
func (s *sandbox) start(start func() error) error {
	return onThreadIn(s.netnsPath, s.hostname, func() error {
		if err := s.enterMounts(); err != nil {
			return err
		}
		if err := s.dropPrivileges(); err != nil {
			return err
		}
		return start()
	})
}

// enterMounts gives the thread a mount namespace of its own: the host's
// mounts seen as a slave (new host mounts still show; nothing done here
// goes back), the volumes bound at their mount paths, the root read-only
// if asked. A container without volumes and with a writable root keeps the
// host's mount namespace.
func (s *sandbox) enterMounts() error {
	if len(s.mounts) == 0 && !s.readOnlyRoot {
		return nil
	}
	// Unsharing the mount namespace also unshares the thread's file
	// system attributes from the rest of the process.
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("creating a mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("making the container's mounts a slave of the host's: %w", err)
	}
	for _, m := range s.mounts {
		if err := unix.Mount(m.src, m.dst, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("binding %s at %s: %w", m.src, m.dst, err)
		}
		if m.readOnly {
			if err := unix.Mount("", m.dst, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
				return fmt.Errorf("making %s read-only: %w", m.dst, err)
			}
		}
	}
	// The root last: a bind mount takes the flags of the mount its source
	// is on, so volumes bound from a read-only root (a state directory
	// under /tmp on the root file system) would be read-only too.
	if s.readOnlyRoot {
		if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
			return fmt.Errorf("making the root read-only: %w", err)
		}
	}
	return nil
}

// dropPrivileges limits the capability bounding set, which a root
// process's capabilities come from at exec, and sets no_new_privs.
func (s *sandbox) dropPrivileges() error {
	if !s.allCaps {
		last, err := lastCapability()
		if err != nil {
			return err
		}
		for c := 0; c <= last; c++ {
			if s.caps[c] {
				continue
			}
			if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
				return fmt.Errorf("dropping capability %d: %w", c, err)
			}
		}
	}
	if s.noNewPrivs {
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("setting no_new_privs: %w", err)
		}
	}
	return nil
}

// lastCapability is the highest capability the running kernel knows.
func lastCapability() (int, error) {
	data, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("reading the last capability: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("reading the last capability: %w", err)
	}
	return n, nil
}
