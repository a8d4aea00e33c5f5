package controllers

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	cnpv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/nft"
)

// wireRecorder records, per API resource, the content types of the API
// server's answers to the agent's lists and watches.
type wireRecorder struct {
	mu    sync.Mutex
	types map[string]map[string]bool // resource -> content type -> seen
}

func (r *wireRecorder) wrap(rt http.RoundTripper) http.RoundTripper {
	return roundTripperFunc(func(req *http.Request) (*http.Response, error) {
		resp, err := rt.RoundTrip(req)
		if err != nil || req.Method != http.MethodGet || resp.StatusCode != http.StatusOK {
			return resp, err
		}
		// /api/v1/pods, /apis/policy.networking.k8s.io/v1beta1/clusternetworkpolicies:
		// the last path element names the resource of a cluster-wide list
		// or watch, which is all the agent's cache asks for.
		path := strings.Split(strings.Trim(req.URL.Path, "/"), "/")
		resource := path[len(path)-1]
		// Without parameters: "application/vnd.kubernetes.protobuf;stream=watch".
		ct, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
		r.mu.Lock()
		if r.types[resource] == nil {
			r.types[resource] = map[string]bool{}
		}
		r.types[resource][ct] = true
		r.mu.Unlock()
		return resp, nil
	})
}

// seen returns the content types answered for a resource.
func (r *wireRecorder) seen(resource string) map[string]bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]bool{}
	for ct := range r.types[resource] {
		out[ct] = true
	}
	return out
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(req *http.Request) (*http.Response, error) { return f(req) }

// TestWireFormat: the agent lists and watches the built-in types in the
// encoding asked for (protobuf by default), as the real API server's
// answers show, while ClusterNetworkPolicies, which the API server serves
// in JSON only, keep working in JSON and are enforced either way.
func TestWireFormat(t *testing.T) {
	for _, tc := range []struct {
		format  WireFormat
		builtin string
	}{
		{"", runtime.ContentTypeProtobuf},
		{WireJSON, runtime.ContentTypeJSON},
	} {
		t.Run("format="+string(tc.format), func(t *testing.T) {
			rec := &wireRecorder{types: map[string]map[string]bool{}}
			a, _ := startCNPAgentWith(t, "node-1", "standard", func(cfg *rest.Config, opts *Options) {
				cfg.Wrap(rec.wrap)
				opts.WireFormat = tc.format
			})
			a.createNamespace(t, "prod", map[string]string{"env": "prod"})
			a.createPod(t, "prod", "web", "node-1", map[string]string{"app": "web"}, "10.1.0.1")
			deny := webEgressDeny("deny-docs", cnpv1beta1.AdminTier, 1)
			if err := a.client.Create(a.ctx, deny); err != nil {
				t.Fatal(err)
			}
			// The pod (from the pod watch) and the policy (from the
			// ClusterNetworkPolicy watch) both reached the kernel.
			eventually(t, "the local subject pod in the egress map", wantKeys(a.kernel, nft.MapEgressV4, "10.1.0.1"))

			for _, resource := range []string{"pods", "namespaces", "networkpolicies", "nodes"} {
				got := rec.seen(resource)
				if len(got) != 1 || !got[tc.builtin] {
					t.Errorf("%s answered as %v, want only %s", resource, got, tc.builtin)
				}
			}
			if got := rec.seen("clusternetworkpolicies"); len(got) != 1 || !got[runtime.ContentTypeJSON] {
				t.Errorf("clusternetworkpolicies answered as %v, want only %s", got, runtime.ContentTypeJSON)
			}
		})
	}
}

func TestParseWireFormat(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    WireFormat
		wantErr bool
	}{
		{"protobuf", WireProtobuf, false},
		{"json", WireJSON, false},
		{"", "", true},
		{"yaml", "", true},
	} {
		got, err := ParseWireFormat(tc.in)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("ParseWireFormat(%q) = %q, %v; want %q, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}
