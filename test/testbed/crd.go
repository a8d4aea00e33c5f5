package testbed

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// CRDChannel is a release channel of the ClusterNetworkPolicy CRD:
// experimental adds the nodes and domainNames peers and
// destinationNamedPort to standard.
type CRDChannel string

// The channels sigs.k8s.io/network-policy-api ships under config/crd.
const (
	CRDStandard     CRDChannel = "standard"
	CRDExperimental CRDChannel = "experimental"
)

// ClusterNetworkPolicyCRD returns the file of the ClusterNetworkPolicy
// CRD of a channel, as the module the project requires ships it (found
// with `go list -m`, so the version is go.mod's).
func ClusterNetworkPolicyCRD(channel CRDChannel) (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "sigs.k8s.io/network-policy-api").Output()
	if err != nil {
		return "", fmt.Errorf("finding the module sigs.k8s.io/network-policy-api: %w", err)
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", fmt.Errorf("the module sigs.k8s.io/network-policy-api is not downloaded (go mod download)")
	}
	return filepath.Join(dir, "config", "crd", string(channel), "policy.networking.k8s.io_clusternetworkpolicies.yaml"), nil
}

// Scheme knows what the tests read and write: the built-in types and
// ClusterNetworkPolicy. It is the test's own, not the agent's
// (controllers.NewScheme), so the evaluator's view of the cluster does
// not depend on what the agent registers.
func Scheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("building the scheme: %w", err)
	}
	if err := policyv1beta1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("building the scheme: %w", err)
	}
	return s, nil
}

func newClient(cfg *rest.Config) (client.Client, error) {
	s, err := Scheme()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: s})
	if err != nil {
		return nil, fmt.Errorf("creating an API client: %w", err)
	}
	return c, nil
}
