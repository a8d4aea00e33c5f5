package controllers

import (
	"errors"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"
)

// builtinMapper answers the REST mappings of the built-in kinds the agent
// watches (Pods, Namespaces, NetworkPolicies, Nodes) without asking the
// API server, and everything else (ClusterNetworkPolicies, Events) through
// controller-runtime's lazy discovery mapper.
//
// Why: building the manager's cache looks up the mapping of every type it
// is configured for. With discovery behind that lookup, an agent started
// while the API server is away would block there, before its probe server
// exists, and the kubelet's liveness probe would kill it over and over —
// although nothing is wrong with the agent and the last committed table
// keeps enforcing. These mappings are fixed by the API; asking for them
// can wait until the watches start.
type builtinMapper struct {
	meta.RESTMapper // discovery, for the kinds builtin does not know
	builtin         *meta.DefaultRESTMapper
}

func newBuiltinMapper(cfg *rest.Config, httpClient *http.Client) (meta.RESTMapper, error) {
	dynamic, err := apiutil.NewDynamicRESTMapper(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	builtin := meta.NewDefaultRESTMapper(nil)
	builtin.Add(corev1.SchemeGroupVersion.WithKind("Pod"), meta.RESTScopeNamespace)
	builtin.Add(corev1.SchemeGroupVersion.WithKind("Namespace"), meta.RESTScopeRoot)
	builtin.Add(corev1.SchemeGroupVersion.WithKind("Node"), meta.RESTScopeRoot)
	builtin.Add(networkingv1.SchemeGroupVersion.WithKind("NetworkPolicy"), meta.RESTScopeNamespace)
	return &builtinMapper{RESTMapper: dynamic, builtin: builtin}, nil
}

func (m *builtinMapper) RESTMapping(gk schema.GroupKind, versions ...string) (*meta.RESTMapping, error) {
	mapping, err := m.builtin.RESTMapping(gk, versions...)
	if err == nil || !isNoMatch(err) {
		return mapping, err
	}
	return m.RESTMapper.RESTMapping(gk, versions...)
}

func (m *builtinMapper) RESTMappings(gk schema.GroupKind, versions ...string) ([]*meta.RESTMapping, error) {
	mappings, err := m.builtin.RESTMappings(gk, versions...)
	if err == nil || !isNoMatch(err) {
		return mappings, err
	}
	return m.RESTMapper.RESTMappings(gk, versions...)
}

func (m *builtinMapper) KindFor(resource schema.GroupVersionResource) (schema.GroupVersionKind, error) {
	gvk, err := m.builtin.KindFor(resource)
	if err == nil || !isNoMatch(err) {
		return gvk, err
	}
	return m.RESTMapper.KindFor(resource)
}

func isNoMatch(err error) bool {
	var noKind *meta.NoKindMatchError
	var noResource *meta.NoResourceMatchError
	return errors.As(err, &noKind) || errors.As(err, &noResource)
}
