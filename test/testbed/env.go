package testbed

import (
	"os"
	"testing"
)

// RequireKernel skips the test (or fails it under CI=true) when it cannot
// create network namespaces or start the control plane.
func RequireKernel(t testing.TB) {
	t.Helper()
	if reason := kernelUnavailable(); reason != "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot run under CI=true: %s", reason)
		}
		t.Skip(reason)
	}
}

func kernelUnavailable() string {
	if os.Geteuid() != 0 {
		return "needs root to create network namespaces"
	}
	if _, err := lookPath("ip"); err != nil {
		return "needs the ip command (Debian package iproute2)"
	}
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		return "needs KUBEBUILDER_ASSETS with kube-apiserver and etcd (make envtest-assets; make test sets it)"
	}
	for _, bin := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(assets + "/" + bin); err != nil {
			return "KUBEBUILDER_ASSETS lacks " + bin + " (make envtest-assets)"
		}
	}
	return ""
}
