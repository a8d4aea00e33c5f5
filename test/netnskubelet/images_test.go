package netnskubelet

import (
	"slices"
	"testing"
)

func TestImageTable(t *testing.T) {
	images := DefaultImages("/bin/agnhost", "/bin/nftpol")
	for _, tc := range []struct {
		ref           string
		command, args []string
		want          []string
	}{
		// The image's ENTRYPOINT and CMD.
		{ref: "registry.k8s.io/e2e-test-images/agnhost:2.53", want: []string{"/bin/agnhost", "pause"}},
		// args replace CMD, keep ENTRYPOINT.
		{ref: "registry.k8s.io/e2e-test-images/agnhost:2.53", args: []string{"netexec", "--http-port=8080"}, want: []string{"/bin/agnhost", "netexec", "--http-port=8080"}},
		// command replaces both; its first word maps through the image's files.
		{ref: "registry.k8s.io/e2e-test-images/agnhost@sha256:0123", command: []string{"/agnhost", "serve-hostname"}, want: []string{"/bin/agnhost", "serve-hostname"}},
		{ref: "registry.k8s.io/e2e-test-images/agnhost", command: []string{"agnhost-2"}, args: []string{"pause"}, want: []string{"/bin/agnhost", "pause"}},
		// pause is agnhost's pause subcommand.
		{ref: "registry.k8s.io/pause:3.10", want: []string{"/bin/agnhost", "pause"}},
		// The agent image, with or without a registry.
		{ref: "nftpol:dev", args: []string{"--node-name=n1"}, want: []string{"/bin/nftpol", "--node-name=n1"}},
		{ref: "docker.io/library/nftpol", want: []string{"/bin/nftpol"}},
	} {
		img, ok := images.Lookup(tc.ref)
		if !ok {
			t.Errorf("%s: not in the table", tc.ref)
			continue
		}
		got, err := img.Argv(tc.command, tc.args)
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("%s %v %v: got %v, %v; want %v", tc.ref, tc.command, tc.args, got, err, tc.want)
		}
	}
	for _, ref := range []string{"busybox", "registry.k8s.io/e2e-test-images/agnhost-fake:1", "localhost:5000/nftpol:dev"} {
		if _, ok := images.Lookup(ref); ok {
			t.Errorf("%s: found in the table", ref)
		}
	}
}

func TestExpand(t *testing.T) {
	vars := map[string]string{"A": "x", "EMPTY": ""}
	for in, want := range map[string]string{
		"$(A)":        "x",
		"a$(A)b$(A)":  "axbx",
		"$(EMPTY)-":   "-",
		"$(MISSING)":  "$(MISSING)",
		"$$(A)":       "$(A)",
		"$":           "$",
		"$(A":         "$(A",
		"no vars":     "no vars",
		"100$ and $x": "100$ and $x",
	} {
		if got := expand(in, vars); got != want {
			t.Errorf("expand(%q) = %q, want %q", in, got, want)
		}
	}
}
