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

	"github.com/google/nftables"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors/selectorstest"
	"github.com/nftpol/nftpol/test/kerneltest"
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
	runRandomPolicies(t, randomRun{prefix: e2ePrefix + "rnd", rounds: 6})
}

// TestRandomPoliciesLookupLayout is TestRandomPoliciesAgreeWithEvaluator
// with every isolation chain in the lookup layout (nft/lookup.go, agents at
// --lookup-min-policies 1): the verdict maps decide every packet of random
// clusters as the evaluator does. Most NetworkPolicies of a round are bent
// to rules that fit the maps (fitLookupMaps), the others keep their jump
// between segments, and the test fails unless the agents' tables held
// elements in maps of every shape during the run (it draws more rounds,
// up to three times as many, until they have): it cannot pass with the
// maps unused. Same knobs (default 6 rounds).
func TestRandomPoliciesLookupLayout(t *testing.T) {
	kerneltest.Require(t, kerneltest.ControlPlane)
	runRandomPolicies(t, randomRun{prefix: e2ePrefix + "rndlook", rounds: 6, lookupLayout: true})
}

// randomRun is one variant of the random-policies property test.
type randomRun struct {
	prefix string
	// rounds is the default of NFTPOL_E2E_ROUNDS.
	rounds int
	// lookupLayout starts the agents with every isolation chain in the
	// lookup layout, bends the policies to fit its maps and checks the
	// maps were used.
	lookupLayout bool
}

func runRandomPolicies(t *testing.T, run randomRun) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("NFTPOL_E2E_SEED"); s != "" {
		v, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Fatalf("NFTPOL_E2E_SEED=%q: %v", s, err)
		}
		seed = v
	}
	rounds := run.rounds
	if s := os.Getenv("NFTPOL_E2E_ROUNDS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 || v > 200 {
			t.Fatalf("NFTPOL_E2E_ROUNDS=%q: want 1-200", s)
		}
		rounds = v
	}
	args := []string{"--deny-action", "reject"}
	if run.lookupLayout {
		args = append(args, "--lookup-min-policies", "1")
	}
	m := startModel(t, run.prefix, args...)
	t.Logf("seed %d (NFTPOL_E2E_SEED replays it), %d rounds", seed, rounds)
	r := rand.New(rand.NewSource(seed))
	ctx := context.Background()
	start := time.Now()
	applied, refused := 0, 0
	var mapped lookupElements
	// The lookup layout's run goes on past its rounds (up to three times
	// as many) until the maps of every shape have held elements.
	unproven := func() bool { return run.lookupLayout && !mapped.everyShape() }
	round := 1
	for ; round <= rounds || unproven() && round <= 3*rounds; round++ {
		m.reset(t)
		nps, cnps := selectorstest.RandomPolicies(selectorstest.RandomChoices(r, 512).APIValid())
		if run.lookupLayout {
			// The NetworkPolicies of three draws: segments of several
			// policies, whose elements must go to the first allowing them.
			for draw := 2; draw <= 3; draw++ {
				more, _ := selectorstest.RandomPolicies(selectorstest.RandomChoices(r, 512).APIValid())
				for _, p := range more {
					p.Name += fmt.Sprintf("-%d", draw)
				}
				nps = append(nps, more...)
			}
			fitLookupMaps(r, nps)
		}
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
		if run.lookupLayout {
			// The packets agreed with the table in force; what it held:
			var held lookupElements
			for _, n := range m.bed.Nodes {
				held.add(readLookupElements(t, n.NetNSPath))
			}
			t.Logf("round %d: lookup maps: %s", round, held)
			mapped.add(held)
		}
	}
	t.Logf("%d rounds, %d policies applied (%d refused by the API server), %d probes in %s",
		round-1, applied, refused, m.probes.Load(), time.Since(start).Round(time.Millisecond))
	if run.lookupLayout {
		t.Logf("lookup maps over the rounds and nodes: %s", mapped)
		if unproven() {
			t.Fatalf("seed %d: the lookup maps held %s: some shape was never used, the run proves nothing of it", seed, mapped)
		}
	}
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

// lookupBlocks are ipBlocks over the testbed's pod addresses (10.244.<node>.<n>,
// fd00:10:244:<node>::<n>), whole nodes and parts of one, that
// fitLookupMaps adds to rules: the generator's blocks seldom hold a pod.
var lookupBlocks = []string{"10.244.1.0/24", "10.244.2.0/28", "10.244.2.4/30", "fd00:10:244:1::/64", "fd00:10:244:2::/125", "fd00:10:244:2::4/126"}

// fitLookupMaps bends most of nps (two in three, drawn from r) to rules
// that fit the lookup maps (nft/lookup.go): a rule of no peers (every peer)
// takes the pods of its namespace, a named port its number, a port range
// its first port, a protocol without a port port 80 or 81; one rule in
// three gains an ipBlock of lookupBlocks, and a rule with an ipBlock peer
// allows every port. The policies left as drawn keep their jump between
// the segments.
func fitLookupMaps(r *rand.Rand, nps []*networkingv1.NetworkPolicy) {
	fitPorts := func(ports []networkingv1.NetworkPolicyPort, peers []networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPort {
		for _, p := range peers {
			if p.IPBlock != nil {
				return nil
			}
		}
		for i := range ports {
			p := &ports[i]
			p.EndPort = nil
			switch {
			case p.Port == nil:
				v := intstr.FromInt32(int32(80 + r.Intn(2)))
				p.Port = &v
			case p.Port.Type == intstr.String:
				n, err := strconv.Atoi(strings.TrimPrefix(p.Port.StrVal, "serve-"))
				if err != nil {
					n = 80
				}
				v := intstr.FromInt32(int32(n))
				p.Port = &v
			}
		}
		return ports
	}
	fitPeers := func(peers []networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer {
		if len(peers) == 0 {
			peers = []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{}}}
		}
		if r.Intn(3) == 0 {
			peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: lookupBlocks[r.Intn(len(lookupBlocks))]}})
		}
		return peers
	}
	for _, np := range nps {
		if r.Intn(3) == 0 {
			continue
		}
		for i := range np.Spec.Ingress {
			rule := &np.Spec.Ingress[i]
			rule.From = fitPeers(rule.From)
			rule.Ports = fitPorts(rule.Ports, rule.From)
		}
		for i := range np.Spec.Egress {
			rule := &np.Spec.Egress[i]
			rule.To = fitPeers(rule.To)
			rule.Ports = fitPorts(rule.Ports, rule.To)
		}
	}
}

// lookupElements counts the elements of the lookup maps of tables, by
// shape: "pp" (pod peers × single ports), "pa" (pod peers, every port),
// "pr" (ipBlocks, every port).
type lookupElements map[string]int

func (l *lookupElements) add(o lookupElements) {
	if *l == nil {
		*l = lookupElements{}
	}
	for k, n := range o {
		(*l)[k] += n
	}
}

func (l lookupElements) everyShape() bool { return l["pp"] > 0 && l["pa"] > 0 && l["pr"] > 0 }

func (l lookupElements) String() string {
	return fmt.Sprintf("%d elements in pod-peer × port maps, %d in pod-peer maps, %d in ipBlock range maps", l["pp"], l["pa"], l["pr"])
}

// readLookupElements reads the lookup maps ("l-<id>-<shape>-v<family>") of
// the agent's table in the node's namespace at netnsPath.
func readLookupElements(t *testing.T, netnsPath string) lookupElements {
	t.Helper()
	fd, err := os.Open(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(fd.Fd())))
	if err != nil {
		t.Fatal(err)
	}
	sets, err := conn.GetSets(&nftables.Table{Name: nft.DefaultTable, Family: nftables.TableFamilyINet})
	if err != nil {
		t.Fatalf("listing the sets of %s: %v", netnsPath, err)
	}
	out := lookupElements{}
	for _, s := range sets {
		parts := strings.Split(s.Name, "-")
		if len(parts) != 4 || parts[0] != "l" || !s.IsMap {
			continue
		}
		elems, err := conn.GetSetElements(s)
		if err != nil {
			t.Fatalf("reading map %s in %s: %v", s.Name, netnsPath, err)
		}
		for _, e := range elems {
			if !e.IntervalEnd {
				out[parts[2]]++
			}
		}
	}
	return out
}
