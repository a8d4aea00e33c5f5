// Package netpole2e is the entry point of the [sig-network] Netpol suite of
// k8s.io/kubernetes, compiled into one test binary by
// test/upstream/build-e2e.sh. The suite's specs are imported as they are;
// this file only does what test/e2e/e2e_test.go and e2e.go upstream do
// before RunSpecs and that the Netpol specs depend on: register and read the
// framework's flags, wire gomega to the framework, and record the cluster's
// IP family on every ginkgo process. Upstream's suite-wide setup that
// concerns other SIGs (image pre-pulls, cloud providers, conformance lists)
// is left out.
package netpole2e

import (
	"context"
	"flag"
	"os"
	"testing"

	"github.com/onsi/ginkgo/v2"
	"github.com/onsi/gomega"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-base/logs"
	"k8s.io/klog/v2"
	"k8s.io/kubernetes/test/e2e/framework"
	"k8s.io/kubernetes/test/e2e/framework/config"
	netutils "k8s.io/utils/net"

	// The specs under test.
	_ "k8s.io/kubernetes/test/e2e/network/netpol"

	// The framework extensions upstream's suite loads: dumps on failure,
	// the all-nodes-ready check after each spec, gomega's object format.
	_ "k8s.io/kubernetes/test/e2e/framework/debug/init"
	_ "k8s.io/kubernetes/test/e2e/framework/node/init"
	_ "k8s.io/kubernetes/test/utils/ktesting/format"

	// Logging flags on the command line, as upstream.
	_ "k8s.io/component-base/logs/testinit"
)

func TestMain(m *testing.M) {
	config.CopyFlags(config.Flags, flag.CommandLine)
	framework.RegisterCommonFlags(flag.CommandLine)
	framework.RegisterClusterFlags(flag.CommandLine)
	flag.Parse()
	framework.AfterReadingAllFlags(&framework.TestContext)
	os.Exit(m.Run())
}

// The framework reads the cluster's IP family from the kubernetes Service's
// ClusterIP on every ginkgo process, as upstream's setupSuitePerGinkgoNode.
var _ = ginkgo.SynchronizedBeforeSuite(func(ctx context.Context) []byte {
	return nil
}, func(ctx context.Context, _ []byte) {
	c, err := framework.LoadClientset()
	framework.ExpectNoError(err, "loading the client")
	svc, err := c.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	framework.ExpectNoError(err, "reading the kubernetes Service")
	framework.TestContext.IPFamily = "ipv4"
	if netutils.IsIPv6String(svc.Spec.ClusterIP) {
		framework.TestContext.IPFamily = "ipv6"
	}
	framework.Logf("Cluster IP family: %s", framework.TestContext.IPFamily)
})

func TestNetpol(t *testing.T) {
	logs.InitLogs()
	defer logs.FlushLogs()
	klog.EnableContextualLogging(true)
	gomega.RegisterFailHandler(framework.Fail)
	suiteConfig, reporterConfig := framework.CreateGinkgoConfig()
	ginkgo.RunSpecs(t, "Kubernetes NetworkPolicy e2e suite", suiteConfig, reporterConfig)
}
