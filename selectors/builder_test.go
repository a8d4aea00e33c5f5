package selectors_test

import (
	"fmt"
	"maps"
	"math/rand"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// TestBuilderAgreesWithBuildModel runs a Builder through random histories
// of one change at a time (each changed pod or namespace a new object, as
// the agent's cache hands them) and requires every build to equal a fresh
// BuildModel of the same state.
func TestBuilderAgreesWithBuildModel(t *testing.T) {
	const seeds, steps = 300, 25
	for seed := int64(0); seed < seeds; seed++ {
		r := rand.New(rand.NewSource(seed))
		s := selectorstest.State(selectorstest.RandomCluster(selectorstest.RandomChoices(r, 1024)))
		builders := map[string]*selectors.Builder{}
		for _, node := range selectorstest.Nodes() {
			builders[node] = selectors.NewBuilder()
		}
		for step := 0; step < steps; step++ {
			for _, node := range selectorstest.Nodes() {
				got, gotProblems := builders[node].Build(node, s)
				want, wantProblems := selectors.BuildModel(node, s)
				if !reflect.DeepEqual(got, want) || !reflect.DeepEqual(gotProblems, wantProblems) {
					t.Fatalf("seed %d step %d node %s: the Builder's model differs from BuildModel's\ngot  %+v\nwant %+v", seed, step, node, got, want)
				}
			}
			s = changeOne(r, s, step)
		}
	}
}

// changeOne returns s with one random change, sharing every object it does
// not change.
func changeOne(r *rand.Rand, s *selectors.State, step int) *selectors.State {
	out := &selectors.State{
		Pods:       slices.Clone(s.Pods),
		Namespaces: slices.Clone(s.Namespaces),
		Policies:   slices.Clone(s.Policies),
	}
	// The cache lists objects in no fixed order.
	r.Shuffle(len(out.Pods), func(i, j int) { out.Pods[i], out.Pods[j] = out.Pods[j], out.Pods[i] })
	copyPod := func(i int) *selectors.Pod {
		p := *out.Pods[i]
		p.Labels = maps.Clone(p.Labels)
		p.IPs = slices.Clone(p.IPs)
		out.Pods[i] = &p
		return &p
	}
	switch op := r.Intn(10); {
	case op == 0 || len(out.Pods) == 0: // a new pod, like another one
		var p selectors.Pod
		if len(out.Pods) > 0 {
			p = *out.Pods[r.Intn(len(out.Pods))]
		} else {
			p = selectors.Pod{Namespace: "x", NodeName: selectorstest.Nodes()[0]}
		}
		p.Name = fmt.Sprintf("new-%d", step)
		p.Labels = map[string]string{"pod": []string{"a", "b", "c"}[r.Intn(3)]}
		p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 1, byte(step)})}
		out.Pods = append(out.Pods, &p)
	case op == 1: // a pod deleted
		i := r.Intn(len(out.Pods))
		out.Pods = slices.Delete(out.Pods, i, i+1)
	case op == 2: // relabeled
		p := copyPod(r.Intn(len(out.Pods)))
		if _, ok := p.Labels["tier"]; ok {
			delete(p.Labels, "tier")
		} else {
			p.Labels["tier"] = []string{"web", "db"}[r.Intn(2)]
		}
	case op == 3: // finished or back, or moved off the host network
		p := copyPod(r.Intn(len(out.Pods)))
		p.Terminal = !p.Terminal
		p.HostNetwork = false
	case op == 4: // another address
		p := copyPod(r.Intn(len(out.Pods)))
		p.IPs = []netip.Addr{netip.AddrFrom4([4]byte{10, 0, 2, byte(step)})}
	case op == 5: // a namespace relabeled, created or deleted
		ns := []string{"x", "y", "z"}[r.Intn(3)]
		i := slices.IndexFunc(out.Namespaces, func(n *selectors.Namespace) bool { return n.Name == ns })
		switch {
		case i < 0:
			out.Namespaces = append(out.Namespaces, &selectors.Namespace{Name: ns, Labels: map[string]string{"ns": ns, "env": "prod"}})
		case r.Intn(3) == 0:
			out.Namespaces = slices.Delete(out.Namespaces, i, i+1)
		default:
			l := maps.Clone(out.Namespaces[i].Labels)
			if l["env"] == "prod" {
				l["env"] = "dev"
			} else {
				l["env"] = "prod"
			}
			out.Namespaces[i] = &selectors.Namespace{Name: ns, Labels: l}
		}
	case op == 6: // other policies
		out.Policies = selectorstest.RandomCluster(selectorstest.RandomChoices(r, 1024)).Policies
	case op == 7: // a pod claims the address of another (a stale object during reuse)
		from := out.Pods[r.Intn(len(out.Pods))]
		p := copyPod(r.Intn(len(out.Pods)))
		p.IPs = slices.Clone(from.IPs)
		p.Created = from.Created.Add(time.Duration(r.Intn(3)-1) * time.Minute)
	default: // nothing changed: a sync for another reason
	}
	return out
}
