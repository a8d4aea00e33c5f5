package nft

import (
	"math/rand"
	"net/netip"
	"testing"

	"github.com/google/nftables/expr"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// modelAllows decides one direction of a packet at a local pod from the
// Model alone, by the tier semantics model.go documents: the pod's Admin
// policies in order (first matching rule decides; Pass leaves the tier),
// the NetworkPolicy tier when a policy isolates the pod, the Baseline
// policies, then allow. It is the specification the compiled chains are
// held to here; the packet-level conformance against the independent
// reference evaluator lives in test/.
func modelAllows(m *selectors.Model, pod *selectors.PodRules, dir selectors.Direction, pk selectorstest.Packet) bool {
	remote, dst := pk.Src, pk.Dst
	if dir == selectors.Egress {
		remote = pk.Dst
	}
	inSet := func(id string) bool {
		for _, s := range m.AddrSets {
			if s.ID != id {
				continue
			}
			for _, a := range s.Addrs {
				if a == remote {
					return true
				}
			}
			for _, r := range s.Ranges {
				if r.First.BitLen() == remote.BitLen() && r.First.Compare(remote) <= 0 && remote.Compare(r.Last) <= 0 {
					return true
				}
			}
		}
		return false
	}
	matches := func(peers selectors.PeerMatch, ports selectors.PortMatch) bool {
		peerOK := peers.All
		for _, id := range peers.Sets {
			peerOK = peerOK || inSet(id)
		}
		if !peerOK {
			return false
		}
		if ports.All {
			return true
		}
		for _, r := range ports.Ranges {
			if r.Protocol == pk.Protocol && r.First <= pk.Port && pk.Port <= r.Last {
				return true
			}
		}
		for _, s := range m.PortSets {
			if s.ID != ports.Named {
				continue
			}
			for _, e := range s.Entries {
				if e.Addr == dst && e.Protocol == pk.Protocol && e.Port == pk.Port {
					return true
				}
			}
		}
		return false
	}
	tier := func(names []string) (decided, allow bool) {
		for _, name := range names {
			for _, cp := range m.ClusterPolicies {
				if cp.Name != name {
					continue
				}
				for _, r := range cp.Rules(dir) {
					if !matches(r.Peers, r.Ports) {
						continue
					}
					switch r.Action {
					case selectors.ActionAccept:
						return true, true
					case selectors.ActionDeny:
						return true, false
					}
					return false, false // Pass: the rest of the tier is skipped
				}
			}
		}
		return false, false
	}
	if decided, allow := tier(pod.Cluster[dir].Admin); decided {
		return allow
	}
	if keys := pod.Isolating(dir); len(keys) > 0 {
		for _, k := range keys {
			for _, p := range m.Policies {
				if p.Key != k {
					continue
				}
				for _, r := range p.Rules(dir) {
					if matches(r.Peers, r.Ports) {
						return true
					}
				}
			}
		}
		return false
	}
	if decided, allow := tier(pod.Cluster[dir].Baseline); decided {
		return allow
	}
	return true
}

// TestCompiledTiersFollowTheModel runs packets through the compiled base
// chain of one direction (the expressions the kernel receives, in the
// interpreter) at every pod of random models with ClusterNetworkPolicies
// and NetworkPolicies, and holds the verdict to modelAllows.
func TestCompiledTiersFollowTheModel(t *testing.T) {
	cfgs := []Config{{}, {Deny: DenyReject}, {LogDenied: true}, {Deny: DenyReject, LogDenied: true}}
	r := rand.New(rand.NewSource(14))
	checked := 0
	for i := 0; i < 40; i++ {
		m := randomModel(r)
		cfg := cfgs[i%len(cfgs)]
		kt := toKernel(Compile(m, cfg))
		// Remote addresses: every set member and range end, pods, and
		// addresses in no set.
		remotes := []netip.Addr{netip.MustParseAddr("192.0.2.7"), netip.MustParseAddr("2001:db8::7")}
		for _, s := range m.AddrSets {
			remotes = append(remotes, s.Addrs...)
			for _, rg := range s.Ranges {
				remotes = append(remotes, rg.First, rg.Last)
			}
		}
		for _, p := range m.Pods {
			remotes = append(remotes, p.IPs...)
		}
		for pi := range m.Pods {
			pod := &m.Pods[pi]
			for _, local := range pod.IPs {
				for _, remote := range remotes {
					if remote.BitLen() != local.BitLen() || remote == local {
						continue
					}
					for _, proto := range []selectors.Protocol{selectors.ProtocolTCP, selectors.ProtocolUDP, selectors.ProtocolSCTP} {
						for _, port := range []uint16{53, 80, 81, 8001, 9} {
							for _, dir := range selectors.Directions {
								pk := selectorstest.Packet{Src: remote, Dst: local, Protocol: proto, Port: port}
								chain := ChainForwardIngress
								if dir == selectors.Egress {
									pk.Src, pk.Dst = local, remote
									chain = ChainForwardEgress
								}
								w := newWirePacket(pk)
								w.ctState = expr.CtStateBitNEW
								var trace []string
								out, err := kt.runChain(kt.chains[chain], w, 0, &trace)
								if err != nil {
									t.Fatalf("model %d, %s %s: %v", i, dir, pk, err)
								}
								got := out != dropped
								if want := modelAllows(m, pod, dir, pk); got != want {
									t.Fatalf("model %d (%+v), pod %s %s %s: table allows=%v, model %v\n%s\n%s",
										i, cfg, pod.Key, dir, pk, got, want, describeTrace(trace), Compile(m, cfg).String())
								}
								checked++
							}
						}
					}
				}
			}
		}
	}
	t.Logf("%d packet directions checked", checked)
}
