package podstart

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// NodeConflist returns the conflist the node's runtime uses: the first
// *.conflist of confDir in lexical order, as containerd and CRI-O pick it.
func NodeConflist(confDir string) (string, error) {
	entries, err := os.ReadDir(confDir)
	if err != nil {
		return "", fmt.Errorf("reading the CNI configuration directory: %w", err)
	}
	var names []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".conflist") {
			names = append(names, e.Name())
		}
	}
	if len(names) == 0 {
		return "", fmt.Errorf("no .conflist in %s (a single-plugin .conf cannot be chained)", confDir)
	}
	sort.Strings(names)
	return filepath.Join(confDir, names[0]), nil
}

// Install copies the executable at self into binDir as PluginType and
// appends the plugin, configured with socket, to the end of the node's
// conflist (NodeConflist), replacing an entry of an earlier install. It
// returns the conflist it edited. The binary goes first: a conflist must
// never name a plugin the runtime cannot find.
func Install(self, binDir, confDir, socket string) (string, error) {
	if err := copyExecutable(self, filepath.Join(binDir, PluginType)); err != nil {
		return "", err
	}
	path, err := NodeConflist(confDir)
	if err != nil {
		return "", err
	}
	entry := map[string]any{"type": PluginType, "socket": socket}
	return path, editConflist(path, func(plugins []any) []any {
		return append(withoutPlugin(plugins), entry)
	})
}

// Uninstall takes the plugin out of every conflist of confDir, then
// removes its binary from binDir. Both are idempotent.
func Uninstall(binDir, confDir string) error {
	entries, err := os.ReadDir(confDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading the CNI configuration directory: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".conflist") {
			continue
		}
		if err := editConflist(filepath.Join(confDir, e.Name()), withoutPlugin); err != nil {
			return err
		}
	}
	if err := os.Remove(filepath.Join(binDir, PluginType)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the plugin binary: %w", err)
	}
	return nil
}

func withoutPlugin(plugins []any) []any {
	out := plugins[:0:0]
	for _, p := range plugins {
		if m, ok := p.(map[string]any); ok && m["type"] == PluginType {
			continue
		}
		out = append(out, p)
	}
	return out
}

// editConflist rewrites the plugins of the conflist at path with edit,
// atomically (a runtime reading it sees the old or the new file), and
// only when they change. Other keys are kept.
func editConflist(path string, edit func([]any) []any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	var conf map[string]any
	if err := json.Unmarshal(data, &conf); err != nil {
		return fmt.Errorf("parsing %s: %w", path, err)
	}
	plugins, ok := conf["plugins"].([]any)
	if !ok {
		return fmt.Errorf("%s has no plugins list", path)
	}
	conf["plugins"] = edit(plugins)
	out, err := json.MarshalIndent(conf, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding %s: %w", path, err)
	}
	var old map[string]any
	_ = json.Unmarshal(data, &old)
	if prev, _ := json.MarshalIndent(old, "", "  "); bytes.Equal(prev, out) {
		return nil
	}
	return writeAtomic(path, out, 0o644)
}

func copyExecutable(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("opening the plugin executable: %w", err)
	}
	defer in.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, in); err != nil {
		return fmt.Errorf("reading the plugin executable: %w", err)
	}
	return writeAtomic(dst, buf.Bytes(), 0o755)
}

// writeAtomic writes data to a temporary file next to path and renames it
// over path.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
