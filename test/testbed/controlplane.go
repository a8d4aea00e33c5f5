package testbed

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/nftpol/nftpol/test/kerneltest"
)

// ControlPlane is a running kube-apiserver with etcd, with the
// ClusterNetworkPolicy CRD of the experimental channel installed.
type ControlPlane struct {
	Config    *rest.Config
	Clientset kubernetes.Interface
	// Client reads and writes every type of Scheme, ClusterNetworkPolicy
	// included; reference.Read(ctx, Client) is the evaluator's view.
	Client client.Client
	// Kubeconfig is the path of a kubeconfig file for agent processes.
	Kubeconfig string

	env *envtest.Environment
	dir string
}

// StartControlPlane starts envtest with the ClusterNetworkPolicy CRD of
// the experimental channel (a superset of standard) and writes a
// kubeconfig file. Stop it with Stop.
func StartControlPlane() (*ControlPlane, error) {
	if reason := kerneltest.Unavailable(kerneltest.ControlPlane); reason != "" {
		return nil, fmt.Errorf("control plane unavailable: %s", reason)
	}
	crd, err := ClusterNetworkPolicyCRD(CRDExperimental)
	if err != nil {
		return nil, err
	}
	env := &envtest.Environment{CRDInstallOptions: envtest.CRDInstallOptions{Paths: []string{crd}, ErrorIfPathMissing: true}}
	cfg, err := env.Start()
	if err != nil {
		return nil, fmt.Errorf("starting kube-apiserver and etcd: %w", err)
	}
	cp := &ControlPlane{Config: cfg, env: env}
	cp.Clientset, err = kubernetes.NewForConfig(cfg)
	if err != nil {
		_ = cp.Stop()
		return nil, fmt.Errorf("creating a clientset: %w", err)
	}
	if cp.Client, err = newClient(cfg); err != nil {
		_ = cp.Stop()
		return nil, err
	}
	cp.dir, err = os.MkdirTemp("", "nftpol-testbed-")
	if err != nil {
		_ = cp.Stop()
		return nil, err
	}
	cp.Kubeconfig = filepath.Join(cp.dir, "kubeconfig")
	if err := os.WriteFile(cp.Kubeconfig, env.KubeConfig, 0o600); err != nil {
		_ = cp.Stop()
		return nil, fmt.Errorf("writing the kubeconfig: %w", err)
	}
	return cp, nil
}

// Stop stops the API server and etcd and removes the kubeconfig.
func (cp *ControlPlane) Stop() error {
	if cp.dir != "" {
		_ = os.RemoveAll(cp.dir)
	}
	return cp.env.Stop()
}

// StartControlPlaneT starts the control plane for a test and stops it at
// its end.
func StartControlPlaneT(t testing.TB) *ControlPlane {
	t.Helper()
	kerneltest.Require(t, kerneltest.ControlPlane)
	cp, err := StartControlPlane()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Errorf("stopping the control plane: %v", err)
		}
	})
	return cp
}
