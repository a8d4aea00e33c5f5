package main

import (
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/nftpol/nftpol/podstart"
)

// runCNIPlugin runs one CNI command (CNI_COMMAND and the rest of the CNI
// environment) and exits as the CNI spec asks: an error is printed as
// JSON on stdout, with a non-zero status.
func runCNIPlugin() {
	if e := podstart.Plugin("nftpol CNI plugin " + version); e != nil {
		_ = e.Print()
		os.Exit(1)
	}
}

// runCNIInstall puts the plugin into the node's CNI directories (the
// agent DaemonSet's init container) or takes it out (uninstall).
func runCNIInstall(args []string, stdout, stderr io.Writer, uninstall bool) error {
	name := "cni-install"
	if uninstall {
		name = "cni-uninstall"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	binDir := fs.String("bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	confDir := fs.String("conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	socket := fs.String("socket", podstart.DefaultSocket, "the agent's socket, written into the plugin's configuration")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if uninstall {
		if err := podstart.Uninstall(*binDir, *confDir); err != nil {
			return err
		}
		_, err := fmt.Fprintf(stdout, "%s removed from %s and %s\n", podstart.PluginType, *binDir, *confDir)
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding our executable: %w", err)
	}
	conflist, err := podstart.Install(self, *binDir, *confDir, *socket)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(stdout, "%s installed in %s and chained into %s\n", podstart.PluginType, *binDir, conflist)
	return err
}
