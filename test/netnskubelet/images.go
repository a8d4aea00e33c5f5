package netnskubelet

import (
	"fmt"
	"os/exec"
	"path"
	"strings"
)

// Image is what an image reference stands for on this machine: the
// image's ENTRYPOINT and CMD, and the binaries built from source that
// stand in for the image's files.
type Image struct {
	// Repository matches image references "<Repository>:<tag>",
	// "<Repository>@<digest>" or the bare repository.
	Repository string
	// Entrypoint and Cmd are the image's ENTRYPOINT and CMD, with the
	// paths they name as they are inside the image.
	Entrypoint, Cmd []string
	// Files maps a path inside the image to the command line that runs it
	// here: its first element is a host binary, the rest are arguments
	// put before the container's own (agnhost is one binary with
	// subcommands, so the pause image's /pause is [agnhost, "pause"]).
	Files map[string][]string
}

// Images is the image table. Lookups go by repository; the first match
// wins.
type Images []Image

// DefaultImages maps the images the cluster's tests run: the e2e test
// image agnhost (built from k8s.io/kubernetes test/images/agnhost), the
// pause image (agnhost's pause subcommand) and the nftpol agent image.
func DefaultImages(agnhost, nftpol string) Images {
	return Images{
		{
			Repository: "registry.k8s.io/e2e-test-images/agnhost",
			Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"},
			Files: map[string][]string{"/agnhost": {agnhost}, "/agnhost-2": {agnhost}},
		},
		{
			Repository: "registry.k8s.io/pause",
			Entrypoint: []string{"/pause"},
			Files:      map[string][]string{"/pause": {agnhost, "pause"}},
		},
		{
			Repository: "nftpol",
			Entrypoint: []string{"/nftpol"},
			Files:      map[string][]string{"/nftpol": {nftpol}},
		},
	}
}

// Lookup returns the table entry of an image reference.
func (t Images) Lookup(ref string) (*Image, bool) {
	repo := ref
	if i := strings.Index(repo, "@"); i >= 0 {
		repo = repo[:i]
	}
	// A tag follows the last colon after the last slash (a colon before
	// it is a registry port).
	if i := strings.LastIndex(repo, ":"); i > strings.LastIndex(repo, "/") {
		repo = repo[:i]
	}
	for _, prefix := range []string{"docker.io/library/", "docker.io/"} {
		repo = strings.TrimPrefix(repo, prefix)
	}
	for i := range t {
		if t[i].Repository == repo {
			return &t[i], true
		}
	}
	return nil, false
}

// Argv returns the command line that runs a container with this image:
// command overrides ENTRYPOINT and args overrides CMD, as in Kubernetes,
// then the first word is resolved with Resolve.
func (img *Image) Argv(command, args []string) ([]string, error) {
	argv := append([]string{}, img.Entrypoint...)
	if len(command) > 0 {
		argv = append([]string{}, command...)
	}
	if len(args) > 0 {
		argv = append(argv, args...)
	} else if len(command) == 0 {
		argv = append(argv, img.Cmd...)
	}
	return img.Resolve(argv)
}

// Resolve maps the first word of a command line to what runs it here: a
// file of the image (by absolute path, or by bare name as a shell would
// find it on the image's PATH), else a program of the host's PATH. The
// host fallback is what lets `kubectl exec POD -- curl ...` work as it does
// in the agnhost image, which ships curl, nc and a shell.
func (img *Image) Resolve(argv []string) ([]string, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("image %s: no command: neither the pod nor the image table gives one", img.Repository)
	}
	first := argv[0]
	if files, ok := img.Files[first]; ok {
		return append(append([]string{}, files...), argv[1:]...), nil
	}
	if !strings.Contains(first, "/") {
		for p, files := range img.Files {
			if path.Base(p) == first {
				return append(append([]string{}, files...), argv[1:]...), nil
			}
		}
	}
	host, err := exec.LookPath(path.Base(first))
	if err != nil {
		return nil, fmt.Errorf("image %s has no %s in the image table, and the host has no %s: %w", img.Repository, first, path.Base(first), err)
	}
	return append([]string{host}, argv[1:]...), nil
}
