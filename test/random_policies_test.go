package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/selectors/selectorstest"
	"github.com/nftpol/nftpol/test/testbed"
)

// TestRandomPoliciesAgreeWithEvaluator is the property test of the whole
// agent with real packets: rounds of random NetworkPolicies,
// ClusterNetworkPolicies and both at once (selectorstest.RandomPolicies,
// the generator the model and compiler fuzz targets use) applied to the
// upstream model through the API server, and after each round the matrices
// on TCP and UDP, ports 80 and 81, IPv4 and IPv6 must equal the reference
// evaluator's prediction from the objects the API server holds. The
// generator draws only what the API server accepts; anything it still
// refuses is dropped (and counted).
//
// NFTPOL_E2E_SEED replays a seed; NFTPOL_E2E_ROUNDS sets the rounds
// (default 6).
func TestRandomPoliciesAgreeWithEvaluator(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("NFTPOL_E2E_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("NFTPOL_E2E_SEED=%q: %v", s, err)
		}
		seed = v
	}
	rounds := 6
	if s := os.Getenv("NFTPOL_E2E_ROUNDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 200 {
			t.Fatalf("NFTPOL_E2E_ROUNDS=%q: want 1-200", s)
		}
		rounds = v
	}
	m := startModel(t, e2ePrefix+"rnd", "--deny-action", "reject")
	t.Logf("seed %d (NFTPOL_E2E_SEED replays it), %d rounds", seed, rounds)
	r := rand.New(rand.NewSource(seed))
	ctx := context.Background()
	start := time.Now()
	applied, refused := 0, 0
	for round := 1; round <= rounds; round++ {
		m.reset(t)
		nps, cnps := selectorstest.RandomPolicies(selectorstest.RandomChoices(r, 512).APIValid())
		renameNamedPorts(nps, cnps)
		var described []string
		for _, p := range nps {
			if _, err := m.cp.Clientset.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
				refused++
				t.Logf("round %d: refused: %v", round, err)
				continue
			}
			applied++
			described = append(described, describeObject("NetworkPolicy "+p.Namespace+"/"+p.Name, p.Spec))
		}
		for _, p := range cnps {
			if err := m.cp.Client.Create(ctx, p); err != nil {
				refused++
				t.Logf("round %d: refused: %v", round, err)
				continue
			}
			applied++
			described = append(described, describeObject("ClusterNetworkPolicy "+p.Name, p.Spec))
		}
		state := m.clusterState(t)
		_, failures := m.convergeTo(func(spec testbed.ProbeSpec) *testbed.Matrix { return testbed.PredictMatrix(state, m.pods, spec) }, 20*time.Second)
		if len(failures) > 0 {
			t.Fatalf("seed %d round %d: the packets differ from the evaluator (expected) after applying:\n%s\n\n%s",
				seed, round, strings.Join(described, "\n"), strings.Join(failures, "\n"))
		}
	}
	t.Logf("%d rounds, %d policies applied (%d refused by the API server), %d probes in %s",
		rounds, applied, refused, m.probes.Load(), time.Since(start).Round(time.Millisecond))
}

func describeObject(what string, spec any) string {
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Sprintf("%s: %+v", what, spec)
	}
	return what + ": " + string(data)
}

// renameNamedPorts points the generator's port names ("serve-80") at the
// testbed's ("serve-80-tcp", "serve-80-udp"): a NetworkPolicy port at the
// name of its protocol, a destinationNamedPort at TCP for 80 and UDP for
// 81, so that named ports of both protocols match.
func renameNamedPorts(nps []*networkingv1.NetworkPolicy, cnps []*policyv1beta1.ClusterNetworkPolicy) {
	npPorts := func(ports []networkingv1.NetworkPolicyPort) {
		for i := range ports {
			p := &ports[i]
			if p.Port == nil || p.Port.Type != intstr.String {
				continue
			}
			suffix := "-tcp"
			if p.Protocol != nil && *p.Protocol == corev1.ProtocolUDP {
				suffix = "-udp"
			}
			v := intstr.FromString(p.Port.StrVal + suffix)
			p.Port = &v
		}
	}
	for _, np := range nps {
		for i := range np.Spec.Ingress {
			npPorts(np.Spec.Ingress[i].Ports)
		}
		for i := range np.Spec.Egress {
			npPorts(np.Spec.Egress[i].Ports)
		}
	}
	cnpPorts := func(protos []policyv1beta1.ClusterNetworkPolicyProtocol) {
		for i := range protos {
			switch protos[i].DestinationNamedPort {
			case "":
			case "serve-81":
				protos[i].DestinationNamedPort = "serve-81-udp"
			default:
				protos[i].DestinationNamedPort += "-tcp"
			}
		}
	}
	for _, c := range cnps {
		for i := range c.Spec.Ingress {
			cnpPorts(c.Spec.Ingress[i].Protocols)
		}
		for i := range c.Spec.Egress {
			cnpPorts(c.Spec.Egress[i].Protocols)
		}
	}
}
