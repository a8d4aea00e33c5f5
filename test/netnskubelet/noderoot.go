package netnskubelet

import (
	"context"
	"encoding/json"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/invoke"
)

// nodeOwnDirs are the host directories every node of a real cluster has
// for itself, which a DaemonSet reaches through hostPath (a CNI plugin's
// binary and conflist, an agent's socket). The nodes of one machine
// share its filesystem, so these paths are each node's own directory
// under its root (Config.StateDir/root): in hostPath volumes, in the CNI
// search path and configuration directory, and in the string values of
// plugin configurations (a socket path a plugin reads). Every other path
// is the machine's.
var nodeOwnDirs = []string{"/etc/cni", "/opt/cni", "/run"}

// nodeRoot maps the node's own directories to its root.
type nodeRoot string

// path returns where p is for this node, and whether it is one of the
// node's own directories.
func (r nodeRoot) path(p string) (string, bool) {
	clean := filepath.Clean(p)
	for _, d := range nodeOwnDirs {
		if clean == d || strings.HasPrefix(clean, d+"/") {
			return filepath.Join(string(r), clean), true
		}
	}
	return p, false
}

// confDir is the node's CNI configuration directory, binDir its own CNI
// plugin directory (searched before the cluster's shared plugins).
func (r nodeRoot) confDir() string { return filepath.Join(string(r), "etc/cni/net.d") }
func (r nodeRoot) binDir() string  { return filepath.Join(string(r), "opt/cni/bin") }

// rootedExec runs CNI plugins with the node's own directories mapped in
// their configuration, as they would read them on a node of their own.
type rootedExec struct {
	invoke.Exec
	root nodeRoot
}

func (e *rootedExec) ExecPlugin(ctx context.Context, pluginPath string, stdinData []byte, environ []string) ([]byte, error) {
	var conf map[string]any
	if json.Unmarshal(stdinData, &conf) == nil {
		changed := false
		for k, v := range conf {
			if s, ok := v.(string); ok && strings.HasPrefix(s, "/") {
				if mapped, ok := e.root.path(s); ok {
					conf[k], changed = mapped, true
				}
			}
		}
		if changed {
			if data, err := json.Marshal(conf); err == nil {
				stdinData = data
			}
		}
	}
	return e.Exec.ExecPlugin(ctx, pluginPath, stdinData, environ)
}
