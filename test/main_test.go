package test

import (
	"os"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftpol/nftpol/test/kerneltest"
)

// e2ePrefix starts the name of every network namespace this package's
// tests create (testbed prefixes, kerneltest.Netns prefixes), so that the
// leftover check below looks at ours only: other packages' kernel tests
// ("nftpol-nft-...", "nftpol-tbt-...") may run at the same time.
const e2ePrefix = "nftpol-e2e-"

func TestMain(m *testing.M) {
	// The test process reads the cluster with controller-runtime clients
	// (the evaluator's view); their logs would only be noise here.
	ctrllog.SetLogger(logr.Discard())
	code := m.Run()
	// Nothing of ours may survive the tests.
	entries, _ := os.ReadDir(kerneltest.NetnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), e2ePrefix) {
			os.Stderr.WriteString("leftover network namespace: " + e.Name() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
