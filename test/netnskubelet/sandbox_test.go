package netnskubelet

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/nftpol/nftpol/test/kerneltest"
)

func TestSandboxCapabilities(t *testing.T) {
	defaults := map[int]bool{}
	for _, n := range defaultCapabilities {
		defaults[capabilityNumbers[n]] = true
	}
	for _, tc := range []struct {
		name    string
		sc      *corev1.SecurityContext
		all     bool
		want    map[int]bool
		wantErr bool
	}{
		{name: "none: the runtimes' default set", want: defaults},
		{name: "drop ALL, add NET_ADMIN (the agent's)", sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
			Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"},
		}}, want: map[int]bool{unix.CAP_NET_ADMIN: true}},
		{name: "CAP_ prefix and lower case accepted", sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
			Drop: []corev1.Capability{"all"}, Add: []corev1.Capability{"cap_net_raw"},
		}}, want: map[int]bool{unix.CAP_NET_RAW: true}},
		{name: "drop one of the defaults", sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{
			Drop: []corev1.Capability{"NET_RAW"},
		}}, want: func() map[int]bool {
			m := map[int]bool{}
			for k := range defaults {
				m[k] = k != unix.CAP_NET_RAW
			}
			return m
		}()},
		{name: "privileged", sc: &corev1.SecurityContext{Privileged: ptr.To(true)}, all: true, want: map[int]bool{}},
		{name: "unknown capability", sc: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"NET_WIZARD"}}}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := newSandbox("", "", corev1.Container{SecurityContext: tc.sc}, nil)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if s.allCaps != tc.all {
				t.Errorf("all capabilities %v, want %v", s.allCaps, tc.all)
			}
			for c := 0; c <= unix.CAP_LAST_CAP; c++ {
				if s.caps[c] != tc.want[c] {
					t.Errorf("capability %d kept %v, want %v", c, s.caps[c], tc.want[c])
				}
			}
		})
	}
}

// TestSandboxStart starts a process in a sandbox and reads back what it
// sees: a volume bound read-only at a path, a read-only root, NET_ADMIN as
// its only capability, no_new_privs; and the host sees none of it.
func TestSandboxStart(t *testing.T) {
	kerneltest.Require(t)
	vol := t.TempDir()
	if err := os.WriteFile(filepath.Join(vol, "token"), []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	mnt := t.TempDir()
	s, err := newSandbox("", "sandboxed", corev1.Container{SecurityContext: &corev1.SecurityContext{
		ReadOnlyRootFilesystem:   ptr.To(true),
		AllowPrivilegeEscalation: ptr.To(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}, Add: []corev1.Capability{"NET_ADMIN"}},
	}}, []bindMount{{src: vol, dst: mnt, readOnly: true}})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `cat `+mnt+`/token; echo; hostname; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; touch `+mnt+`/x 2>&1 | sed 's/.*: //'; touch /sandbox-test 2>&1 | sed 's/.*: //'`)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := s.start(cmd.Start); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	want := "secret\nsandboxed\nCapEff:\t0000000000001000\nCapBnd:\t0000000000001000\nNoNewPrivs:\t1\nRead-only file system\nRead-only file system\n"
	if out.String() != want {
		t.Errorf("inside the sandbox:\n%s\nwant:\n%s", out.String(), want)
	}
	// The host's view is untouched: the mount point is empty, the test's
	// threads keep their capabilities (the sandbox's thread is never
	// reused; it may be the main thread, which /proc/self shows, so read
	// this thread's own status).
	if entries, err := os.ReadDir(mnt); err != nil || len(entries) != 0 {
		t.Errorf("the host sees %v in the mount point (%v)", entries, err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	status, err := os.ReadFile("/proc/thread-self/status")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(status), "CapBnd:\t0000000000001000") {
		t.Error("the test's thread lost its capabilities")
	}
}
