package test

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors/reference"
	"github.com/nftpol/nftpol/test/testbed"
)

// paperModel is the upstream model as API objects only, no kernel: the
// pods get the addresses the testbed would give them, so that the cases'
// hand-written expectations can be held against the reference evaluator
// before (and apart from) any packet.
type paperModel struct {
	cl   *reference.Cluster
	pods []*testbed.Pod
}

func newPaperModel() *paperModel {
	m := &paperModel{cl: &reference.Cluster{}}
	n := 0
	for _, ns := range modelNamespaces {
		m.cl.Namespaces = append(m.cl.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"ns": ns}}})
		for _, name := range modelPods {
			n++
			p := &testbed.Pod{Namespace: ns, Name: name, IPv4: netip.AddrFrom4([4]byte{10, 244, 1, byte(n)}), IPv6: netip.MustParseAddr(fmt.Sprintf("fd00:10:244:1::%d", n))}
			obj := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"pod": name}},
				Spec:   corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "c", Ports: testbed.ContainerPorts([]int{80, 81})}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.IPv4.String(), PodIPs: []corev1.PodIP{{IP: p.IPv4.String()}, {IP: p.IPv6.String()}}}}
			m.cl.Pods = append(m.cl.Pods, obj)
			m.pods = append(m.pods, p)
		}
	}
	return m
}

func (m *paperModel) PodPrefixes(key string) []string {
	for _, p := range m.pods {
		if p.Key() == key {
			return []string{netip.PrefixFrom(p.IPv4, 32).String(), netip.PrefixFrom(p.IPv6, 128).String()}
		}
	}
	return nil
}

// do applies a step to the objects, as modelBed.doStep does to the API.
func (m *paperModel) do(s step) {
	if s.apply != nil {
		for _, p := range s.apply(m) {
			m.cl.Policies = replaceByKey(m.cl.Policies, p, func(q *networkingv1.NetworkPolicy) string { return q.Namespace + "/" + q.Name })
		}
	}
	if s.applyCluster != nil {
		for _, p := range s.applyCluster(m) {
			m.cl.ClusterPolicies = replaceByKey(m.cl.ClusterPolicies, p, func(q *policyv1beta1.ClusterNetworkPolicy) string { return q.Name })
		}
	}
	for _, name := range s.removeCluster {
		m.cl.ClusterPolicies = removeByKey(m.cl.ClusterPolicies, name, func(q *policyv1beta1.ClusterNetworkPolicy) string { return q.Name })
	}
	for _, key := range s.remove {
		m.cl.Policies = removeByKey(m.cl.Policies, key, func(q *networkingv1.NetworkPolicy) string { return q.Namespace + "/" + q.Name })
	}
	for ns, l := range s.namespaceLabels {
		for _, obj := range m.cl.Namespaces {
			if obj.Name == ns {
				obj.Labels = l
			}
		}
	}
	for key, l := range s.podLabels {
		for _, obj := range m.cl.Pods {
			if obj.Namespace+"/"+obj.Name == key {
				obj.Labels = l
			}
		}
	}
}

func replaceByKey[T any](list []T, item T, key func(T) string) []T {
	for i, old := range list {
		if key(old) == key(item) {
			list[i] = item
			return list
		}
	}
	return append(list, item)
}

func removeByKey[T any](list []T, k string, key func(T) string) []T {
	var out []T
	for _, old := range list {
		if key(old) != k {
			out = append(out, old)
		}
	}
	return out
}

// TestCaseExpectationsAgreeWithEvaluator holds every hand-written
// expectation of the conformance cases, NetworkPolicy and
// ClusterNetworkPolicy, against the reference evaluator on the model's
// objects, step by step, with no kernel. The packet runs then hold the
// kernel against both: a case whose expectation and evaluator disagree
// fails here first, naming which.
func TestCaseExpectationsAgreeWithEvaluator(t *testing.T) {
	cases := append(conformanceCases(), clusterPolicyCases()...)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := newPaperModel()
			var keys []string
			for _, p := range m.pods {
				keys = append(keys, p.Key())
			}
			for i, s := range c.steps {
				m.do(s)
				for _, spec := range probeSpecs() {
					e := newExpectation(keys, string(spec.Proto), spec.Port)
					if s.expect != nil {
						s.expect(e)
					}
					want := testbed.NewMatrix(keys, false)
					for _, f := range keys {
						for _, to := range keys {
							want.Set(f, to, e.get(f, to))
						}
					}
					if got := testbed.PredictMatrix(m.cl, m.pods, spec); !got.Equal(want) {
						t.Errorf("step %d (%s), %s: the evaluator (observed) and the expectation (expected) differ:\n%s",
							i+1, s.name, spec, strings.TrimSpace(got.Diff(want)))
					}
				}
			}
		})
	}
}
