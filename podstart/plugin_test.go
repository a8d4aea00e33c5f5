package podstart

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
)

// prevResult is what ptp and host-local hand on to a chained plugin.
const prevResult = `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/run/netns/x"}],"ips":[{"address":"10.244.0.5/24","interface":0},{"address":"fd00:10:244::5/64","interface":0}]}`

// TestPluginWithoutAgent: DEL always succeeds; ADD and CHECK fail closed
// after the timeout unless the conflist asks for failOpen; a plugin that
// is not chained says so.
func TestPluginWithoutAgent(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "absent.sock")
	conf := func(extra string) []byte {
		return []byte(`{"cniVersion":"1.0.0","name":"n","type":"nftpol-cni","socket":"` + socket + `","timeout":"300ms"` + extra + `}`)
	}
	args := "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"
	for _, tc := range []struct {
		name    string
		run     func(*skel.CmdArgs) error
		stdin   []byte
		wantErr string
	}{
		{"DEL without agent", cmdDel, conf(""), ""},
		{"ADD without agent fails closed", func(a *skel.CmdArgs) error { return cmdAdd(a, OpAdd) }, conf("," + prevResult), "did not confirm its addresses are enforced within 300ms"},
		{"CHECK without agent fails", func(a *skel.CmdArgs) error { return cmdAdd(a, OpCheck) }, conf("," + prevResult), "no nftpol agent listens"},
		{"ADD without agent, failOpen", func(a *skel.CmdArgs) error { return cmdAdd(a, OpAdd) }, conf(`,"failOpen":true,` + prevResult), ""},
		{"ADD not chained", func(a *skel.CmdArgs) error { return cmdAdd(a, OpAdd) }, conf(""), "must be chained"},
		{"bad timeout", cmdDel, []byte(`{"cniVersion":"1.0.0","name":"n","type":"nftpol-cni","timeout":"soon"}`), "not a positive duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run(&skel.CmdArgs{ContainerID: "c", Netns: "/run/netns/x", IfName: "eth0", Args: args, StdinData: tc.stdin})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one with %q", err, tc.wantErr)
			}
		})
	}
}

// TestInstallUninstall chains the plugin into the first conflist of a
// directory, idempotently and keeping every other key, and takes it out.
func TestInstallUninstall(t *testing.T) {
	dir := t.TempDir()
	binDir, confDir := filepath.Join(dir, "bin"), filepath.Join(dir, "net.d")
	for _, d := range []string{binDir, confDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	self := filepath.Join(dir, "nftpol")
	if err := os.WriteFile(self, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	first := `{"cniVersion":"1.0.0","name":"k8s","disableCheck":true,"plugins":[{"type":"ptp","ipam":{"type":"host-local"}},{"type":"portmap"}]}`
	second := `{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bridge"}]}`
	if err := os.WriteFile(filepath.Join(confDir, "10-k8s.conflist"), []byte(first), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, "20-other.conflist"), []byte(second), 0o644); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		path, err := Install(self, binDir, confDir, "/run/nftpol/cni.sock")
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Base(path) != "10-k8s.conflist" {
			t.Fatalf("edited %s, want the first conflist", path)
		}
	}
	data, _ := os.ReadFile(filepath.Join(confDir, "10-k8s.conflist"))
	s := string(data)
	if strings.Count(s, `"type": "nftpol-cni"`) != 1 || !strings.Contains(s, `"disableCheck": true`) ||
		strings.Index(s, `"portmap"`) > strings.Index(s, `"nftpol-cni"`) {
		t.Fatalf("conflist after two installs:\n%s", s)
	}
	if other, _ := os.ReadFile(filepath.Join(confDir, "20-other.conflist")); string(other) != second {
		t.Fatalf("the second conflist changed:\n%s", other)
	}
	if b, err := os.ReadFile(filepath.Join(binDir, PluginType)); err != nil || string(b) != "binary" {
		t.Fatalf("plugin binary: %q, %v", b, err)
	}
	for range 2 {
		if err := Uninstall(binDir, confDir); err != nil {
			t.Fatal(err)
		}
	}
	data, _ = os.ReadFile(filepath.Join(confDir, "10-k8s.conflist"))
	if strings.Contains(string(data), PluginType) || !strings.Contains(string(data), `"portmap"`) {
		t.Fatalf("conflist after uninstall:\n%s", data)
	}
	if _, err := os.Stat(filepath.Join(binDir, PluginType)); !os.IsNotExist(err) {
		t.Fatalf("plugin binary left: %v", err)
	}
}
