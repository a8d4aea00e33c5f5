package test

import (
	"os"
	"strings"
	"testing"

	"github.com/go-logr/logr"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/nftpol/nftpol/test/kerneltest"
)

func TestMain(m *testing.M) {
	// The test process reads the cluster with controller-runtime clients
	// (the evaluator's view); their logs would only be noise here.
	ctrllog.SetLogger(logr.Discard())
	code := m.Run()
	// Nothing of ours may survive the tests: every e2e test names its
	// namespaces with a prefix starting with "nftpol-".
	entries, _ := os.ReadDir(kerneltest.NetnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "nftpol-") {
			os.Stderr.WriteString("leftover network namespace: " + e.Name() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
