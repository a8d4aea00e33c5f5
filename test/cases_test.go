package test

import (
	"net/netip"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	policyv1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// caseEnv is what a case may ask of the running testbed while it builds its
// policies: addresses of pods, for the ipBlock cases.
type caseEnv interface {
	// PodPrefixes returns "ip/32" and "ip/128" of the pod "ns/name".
	PodPrefixes(key string) []string
}

// step is one change to the cluster and the reachability expected after it.
type step struct {
	name string
	// apply creates or updates these policies.
	apply func(env caseEnv) []*networkingv1.NetworkPolicy
	// remove deletes these policies ("ns/name").
	remove []string
	// applyCluster creates or updates these ClusterNetworkPolicies;
	// removeCluster deletes these (by name).
	applyCluster  func(env caseEnv) []*policyv1beta1.ClusterNetworkPolicy
	removeCluster []string
	// namespaceLabels and podLabels replace the labels of these objects
	// ("ns" and "ns/pod" keys).
	namespaceLabels map[string]map[string]string
	podLabels       map[string]map[string]string
	// expect narrows the all-allowed expectation for one protocol and port.
	expect func(e *expectation)
	// rulesetHas lists text that the table of the node of a pod ("ns/pod")
	// must contain after the step (for what packets cannot show: SCTP).
	rulesetHas map[string][]string
}

type conformanceCase struct {
	name  string
	steps []step
}

// static wraps fixed policies as an apply function.
func static(ps ...*networkingv1.NetworkPolicy) func(caseEnv) []*networkingv1.NetworkPolicy {
	return func(caseEnv) []*networkingv1.NetworkPolicy { return ps }
}

func oneStep(name string, apply func(caseEnv) []*networkingv1.NetworkPolicy, expect func(e *expectation)) conformanceCase {
	return conformanceCase{name: name, steps: []step{{name: "apply", apply: apply, expect: expect}}}
}

// onlyOn applies f to the expectation of one protocol and port; the others
// are fully denied to target ("ns/pod" pattern).
func tcp80Only(e *expectation) bool { return e.proto == "TCP" && e.port == 80 }

// blocks returns ipBlock peers for each prefix.
func blocks(prefixes []string, except ...[]string) []networkingv1.NetworkPolicyPeer {
	var peers []networkingv1.NetworkPolicyPeer
	for i, p := range prefixes {
		var ex []string
		if i < len(except) {
			ex = except[i]
		}
		peers = append(peers, blockPeer(p, ex...))
	}
	return peers
}

// exceptPods returns, per family, the excepts of the pod's own prefix.
func everythingExcept(env caseEnv, key string) []networkingv1.NetworkPolicyPeer {
	var peers []networkingv1.NetworkPolicyPeer
	for _, p := range env.PodPrefixes(key) {
		all := "0.0.0.0/0"
		if netip.MustParsePrefix(p).Addr().Is6() {
			all = "::/0"
		}
		peers = append(peers, blockPeer(all, p))
	}
	return peers
}

var all = metav1.LabelSelector{}

// conformanceCases mirror the upstream Kubernetes e2e NetworkPolicy suite
// (test/e2e/network/netpol) on its model: namespaces x, y, z labeled
// ns=<name>; pods a, b, c labeled pod=<name>; TCP and UDP on 80 and 81.
func conformanceCases() []conformanceCase {
	return []conformanceCase{
		oneStep("default-deny-ingress",
			static(policy("x", "deny-ingress", all, ingressOnly)),
			func(e *expectation) { e.isolateIngress("x/*") }),
		oneStep("default-deny-all",
			static(policy("x", "deny-all", all, ingressEgress)),
			func(e *expectation) { e.isolateIngress("x/*"); e.isolateEgress("x/*") }),
		oneStep("allow-from-pods-in-server-namespace-by-podselector",
			static(withIngress(policy("x", "allow-b", sel("pod", "a"), nil), from(podPeer(selPtr("pod", "b"))))),
			func(e *expectation) { e.isolateIngress("x/a", "x/b") }),
		oneStep("allow-ingress-from-all-namespaces",
			static(withIngress(policy("x", "allow-all-ns", sel("pod", "a"), nil), from(nsPeer(selPtr())))),
			func(e *expectation) {}),
		oneStep("allow-only-from-other-namespace-by-namespaceselector",
			static(withIngress(policy("x", "allow-ns-y", sel("pod", "a"), nil), from(nsPeer(selPtr("ns", "y"))))),
			func(e *expectation) { e.isolateIngress("x/a", "y/*") }),
		oneStep("podselector-with-matchexpressions",
			static(withIngress(policy("x", "allow-expr", sel("pod", "a"), nil), from(podPeer(exprSel("pod", metav1.LabelSelectorOpIn, "b"))))),
			func(e *expectation) { e.isolateIngress("x/a", "x/b") }),
		oneStep("namespaceselector-with-matchexpressions",
			static(withIngress(policy("x", "allow-ns-expr", sel("pod", "a"), nil), from(nsPeer(exprSel("ns", metav1.LabelSelectorOpIn, "y"))))),
			func(e *expectation) { e.isolateIngress("x/a", "y/*") }),
		oneStep("podselector-or-namespaceselector",
			static(withIngress(policy("x", "allow-or", sel("pod", "a"), nil), from(podPeer(selPtr("pod", "b")), nsPeer(selPtr("ns", "y"))))),
			func(e *expectation) { e.isolateIngress("x/a", "x/b", "y/*") }),
		oneStep("podselector-and-namespaceselector",
			static(withIngress(policy("x", "allow-and", sel("pod", "a"), nil),
				from(nsPodPeer(exprSel("ns", metav1.LabelSelectorOpIn, "y", "z"), exprSel("pod", metav1.LabelSelectorOpIn, "b", "c"))))),
			func(e *expectation) { e.isolateIngress("x/a", "y/b", "y/c", "z/b", "z/c") }),
		oneStep("multiple-podselectors-and-namespaceselectors-notin",
			static(withIngress(policy("x", "allow-notin", sel("pod", "a"), nil),
				from(nsPodPeer(exprSel("ns", metav1.LabelSelectorOpNotIn, "x"), exprSel("pod", metav1.LabelSelectorOpIn, "b", "c"))))),
			func(e *expectation) { e.isolateIngress("x/a", "y/b", "y/c", "z/b", "z/c") }),
		oneStep("any-podselectors",
			static(withIngress(policy("x", "allow-b-c", sel("pod", "a"), nil), from(podPeer(selPtr("pod", "b")), podPeer(selPtr("pod", "c"))))),
			func(e *expectation) { e.isolateIngress("x/a", "x/b", "x/c") }),
		oneStep("pod-in-other-namespace-by-podselector-and-namespaceselector",
			static(withIngress(policy("x", "allow-y-b", sel("pod", "a"), nil), from(nsPodPeer(selPtr("ns", "y"), selPtr("pod", "b"))))),
			func(e *expectation) { e.isolateIngress("x/a", "y/b") }),
		oneStep("namespaceselector-exists-and-podselector-doesnotexist",
			static(withIngress(policy("x", "allow-exists", sel("pod", "a"), nil),
				from(nsPodPeer(exprSel("ns", metav1.LabelSelectorOpExists), exprSel("tier", metav1.LabelSelectorOpDoesNotExist))))),
			func(e *expectation) {}),
		oneStep("ports",
			static(withIngress(policy("x", "allow-80", sel("pod", "a"), nil), ingressPorts(from(podPeer(selPtr("pod", "b"))), port(tcp, 80)))),
			func(e *expectation) {
				if tcp80Only(e) {
					e.isolateIngress("x/a", "x/b")
				} else {
					e.isolateIngress("x/a")
				}
			}),
		oneStep("multiple-stacked-policies-overlapping-podselectors",
			static(
				withIngress(policy("x", "allow-80-from-y", sel("pod", "a"), nil), ingressPorts(from(nsPeer(selPtr("ns", "y"))), port(tcp, 80))),
				withIngress(policy("x", "allow-81-from-z", all, nil), ingressPorts(from(nsPeer(selPtr("ns", "z"))), port(tcp, 81))),
			),
			func(e *expectation) {
				e.isolateIngress("x/*")
				switch {
				case e.proto == "TCP" && e.port == 80:
					e.allow("y/*", "x/a")
				case e.proto == "TCP" && e.port == 81:
					e.allow("z/*", "x/*")
				}
			}),
		oneStep("allow-all",
			static(withIngress(policy("x", "allow-all", all, nil), from())),
			func(e *expectation) {}),
		oneStep("ingress-on-one-named-port",
			static(withIngress(policy("x", "allow-serve-81-tcp", sel("pod", "a"), nil), ingressPorts(from(), namedPort(tcp, "serve-81-tcp")))),
			func(e *expectation) {
				e.isolateIngress("x/a")
				if e.proto == "TCP" && e.port == 81 {
					e.allow("*/*", "x/a")
				}
			}),
		oneStep("ingress-from-namespace-on-one-named-port",
			static(withIngress(policy("x", "allow-y-serve-80-tcp", all, nil), ingressPorts(from(nsPeer(selPtr("ns", "y"))), namedPort(tcp, "serve-80-tcp")))),
			func(e *expectation) {
				e.isolateIngress("x/*")
				if tcp80Only(e) {
					e.allow("y/*", "x/*")
				}
			}),
		oneStep("egress-on-one-named-port",
			static(withEgress(policy("x", "allow-egress-serve-80-udp", sel("pod", "a"), egressOnly), egressPorts(to(), namedPort(udp, "serve-80-udp")))),
			func(e *expectation) {
				e.isolateEgress("x/a")
				if e.proto == "UDP" && e.port == 80 {
					e.allow("x/a", "*/*")
				}
			}),
		{name: "updated-policy", steps: []step{
			{name: "allow from x/b", apply: static(withIngress(policy("x", "allow-updated", sel("pod", "a"), nil), from(podPeer(selPtr("pod", "b"))))),
				expect: func(e *expectation) { e.isolateIngress("x/a", "x/b") }},
			{name: "update to allow from namespace y", apply: static(withIngress(policy("x", "allow-updated", sel("pod", "a"), nil), from(nsPeer(selPtr("ns", "y"))))),
				expect: func(e *expectation) { e.isolateIngress("x/a", "y/*") }},
		}},
		{name: "ingress-from-updated-namespace", steps: []step{
			{name: "selector matches no namespace", apply: static(withIngress(policy("x", "allow-ns2", sel("pod", "a"), nil), from(nsPeer(selPtr("ns2", "updated"))))),
				expect: func(e *expectation) { e.isolateIngress("x/a") }},
			{name: "label namespace y", namespaceLabels: map[string]map[string]string{"y": {"ns": "y", "ns2": "updated"}},
				expect: func(e *expectation) { e.isolateIngress("x/a", "y/*") }},
			{name: "unlabel namespace y", namespaceLabels: map[string]map[string]string{"y": {"ns": "y"}},
				expect: func(e *expectation) { e.isolateIngress("x/a") }},
		}},
		{name: "ingress-from-updated-pod", steps: []step{
			{name: "selector matches no pod", apply: static(withIngress(policy("x", "allow-pod2", sel("pod", "a"), nil), from(podPeer(selPtr("pod2", "updated"))))),
				expect: func(e *expectation) { e.isolateIngress("x/a") }},
			{name: "label pod x/b", podLabels: map[string]map[string]string{"x/b": {"pod": "b", "pod2": "updated"}},
				expect: func(e *expectation) { e.isolateIngress("x/a", "x/b") }},
			{name: "unlabel pod x/b", podLabels: map[string]map[string]string{"x/b": {"pod": "b"}},
				expect: func(e *expectation) { e.isolateIngress("x/a") }},
		}},
		oneStep("deny-ingress-from-pods-in-other-namespaces",
			static(withIngress(policy("x", "allow-same-ns", all, nil), from(podPeer(selPtr())))),
			func(e *expectation) { e.isolateIngress("x/*", "x/*") }),
		{name: "deny-ingress-to-updated-pod", steps: []step{
			{name: "selector matches no pod", apply: static(policy("x", "deny-isolated", sel("target", "isolated"), ingressOnly)),
				expect: func(e *expectation) {}},
			{name: "label pod x/a", podLabels: map[string]map[string]string{"x/a": {"pod": "a", "target": "isolated"}},
				expect: func(e *expectation) { e.isolateIngress("x/a") }},
			{name: "unlabel pod x/a", podLabels: map[string]map[string]string{"x/a": {"pod": "a"}},
				expect: func(e *expectation) {}},
		}},
		oneStep("deny-egress-by-podselector",
			static(policy("x", "deny-egress-a", sel("pod", "a"), egressOnly)),
			func(e *expectation) { e.isolateEgress("x/a") }),
		oneStep("deny-egress-from-all-pods-in-namespace",
			static(policy("x", "deny-egress-all", all, egressOnly)),
			func(e *expectation) { e.isolateEgress("x/*") }),
		oneStep("ingress-and-egress-together",
			static(withEgress(withIngress(policy("x", "in-and-out", sel("pod", "a"), ingressEgress),
				from(podPeer(selPtr("pod", "b")))),
				egressPorts(to(), port(tcp, 80)))),
			func(e *expectation) {
				e.isolateIngress("x/a", "x/b")
				if tcp80Only(e) {
					e.isolateEgress("x/a", "*/*")
				} else {
					e.isolateEgress("x/a")
				}
			}),
		oneStep("deny-egress-on-client-even-if-server-allows",
			static(
				withEgress(policy("x", "egress-to-y", sel("pod", "a"), egressOnly), to(nsPeer(selPtr("ns", "y")))),
				withIngress(policy("z", "allow-from-x-a", all, nil), from(nsPodPeer(selPtr("ns", "x"), selPtr("pod", "a")))),
			),
			func(e *expectation) {
				e.isolateIngress("z/*", "x/a")
				e.isolateEgress("x/a", "y/*")
			}),
		oneStep("egress-to-pod-in-other-namespace-by-podselector-and-namespaceselector",
			static(withEgress(policy("x", "egress-to-y-b", sel("pod", "a"), egressOnly), to(nsPodPeer(selPtr("ns", "y"), selPtr("pod", "b"))))),
			func(e *expectation) { e.isolateEgress("x/a", "y/b") }),
		oneStep("ingress-any-port-on-one-protocol",
			static(withIngress(policy("x", "allow-any-udp", sel("pod", "a"), nil), ingressPorts(from(), anyPortOf(udp)))),
			func(e *expectation) {
				if e.proto != "UDP" {
					e.isolateIngress("x/a")
				}
			}),
		oneStep("multiple-ingress-policies-allow-all-precedence",
			static(
				withIngress(policy("x", "allow-80-from-b", sel("pod", "a"), nil), ingressPorts(from(podPeer(selPtr("pod", "b"))), port(tcp, 80))),
				withIngress(policy("x", "allow-all-to-a", sel("pod", "a"), nil), from()),
			),
			func(e *expectation) {}),
		oneStep("multiple-egress-policies-allow-all-precedence",
			static(
				withEgress(policy("x", "egress-80", sel("pod", "a"), egressOnly), egressPorts(to(), port(tcp, 80))),
				withEgress(policy("x", "egress-all", sel("pod", "a"), egressOnly), to()),
			),
			func(e *expectation) {}),
		{name: "stop-enforcing-after-delete", steps: []step{
			{name: "deny all in x", apply: static(policy("x", "deny-all-then-delete", all, ingressEgress)),
				expect: func(e *expectation) { e.isolateIngress("x/*"); e.isolateEgress("x/*") }},
			{name: "delete", remove: []string{"x/deny-all-then-delete"}, expect: func(e *expectation) {}},
		}},
		oneStep("egress-to-cidr-block",
			func(env caseEnv) []*networkingv1.NetworkPolicy {
				return []*networkingv1.NetworkPolicy{withEgress(policy("x", "egress-cidr", sel("pod", "a"), egressOnly), to(blocks(env.PodPrefixes("y/b"))...))}
			},
			func(e *expectation) { e.isolateEgress("x/a", "y/b") }),
		oneStep("egress-cidr-with-except",
			func(env caseEnv) []*networkingv1.NetworkPolicy {
				return []*networkingv1.NetworkPolicy{withEgress(policy("x", "egress-except", sel("pod", "a"), egressOnly), to(everythingExcept(env, "y/b")...))}
			},
			func(e *expectation) { e.isolateEgress("x/a", "*/*"); e.deny("x/a", "y/b") }),
		oneStep("ip-in-both-cidr-and-except-is-allowed-by-another-block",
			func(env caseEnv) []*networkingv1.NetworkPolicy {
				return []*networkingv1.NetworkPolicy{withEgress(policy("x", "egress-overlap", sel("pod", "a"), egressOnly),
					to(append(everythingExcept(env, "y/b"), blocks(env.PodPrefixes("y/b"))...)...))}
			},
			func(e *expectation) {}),
		oneStep("ingress-and-egress-controlled-independently",
			static(
				policy("x", "deny-egress-a", sel("pod", "a"), egressOnly),
				withIngress(policy("x", "allow-ingress-a", sel("pod", "a"), ingressOnly), from(podPeer(selPtr("pod", "b")))),
			),
			func(e *expectation) { e.isolateEgress("x/a"); e.isolateIngress("x/a", "x/b") }),
		{name: "sctp-is-not-tcp", steps: []step{{name: "allow SCTP/80 only",
			apply:      static(withIngress(policy("x", "allow-sctp-80", sel("pod", "a"), nil), ingressPorts(from(), port(sctp, 80)))),
			expect:     func(e *expectation) { e.isolateIngress("x/a") },
			rulesetHas: map[string][]string{"x/a": {"sctp dport 80 counter", `comment "x/allow-sctp-80 ingress[0]"`}},
		}}},
		oneStep("udp-only-policy-denies-tcp",
			static(withIngress(policy("x", "allow-udp-81", sel("pod", "a"), nil), ingressPorts(from(), port(udp, 81)))),
			func(e *expectation) {
				e.isolateIngress("x/a")
				if e.proto == "UDP" && e.port == 81 {
					e.allow("*/*", "x/a")
				}
			}),
		oneStep("namespaceselector-on-default-namespace-label",
			static(withIngress(policy("x", "allow-meta-name-y", sel("pod", "a"), nil), from(nsPeer(selPtr("kubernetes.io/metadata.name", "y"))))),
			func(e *expectation) { e.isolateIngress("x/a", "y/*") }),
		oneStep("port-range-with-endport",
			static(withIngress(policy("x", "allow-80-to-81", sel("pod", "a"), nil), ingressPorts(from(), portRange(tcp, 80, 81)))),
			func(e *expectation) {
				if e.proto != "TCP" {
					e.isolateIngress("x/a")
				}
			}),
		oneStep("port-range-covering-one-port",
			static(withIngress(policy("x", "allow-81-to-90", sel("pod", "a"), nil), ingressPorts(from(), portRange(tcp, 81, 90)))),
			func(e *expectation) {
				e.isolateIngress("x/a")
				if e.proto == "TCP" && e.port == 81 {
					e.allow("*/*", "x/a")
				}
			}),
		oneStep("egress-named-port-resolved-per-peer",
			static(withEgress(policy("y", "egress-serve-81-tcp", all, egressOnly), egressPorts(to(nsPeer(selPtr("ns", "z"))), namedPort(tcp, "serve-81-tcp")))),
			func(e *expectation) {
				e.isolateEgress("y/*")
				if e.proto == "TCP" && e.port == 81 {
					e.allow("y/*", "z/*")
				}
			}),
		{name: "policy-namespace-relabel-and-pod-relabel-out-of-selector", steps: []step{
			{name: "isolate pods labeled pod=c", apply: static(policy("z", "deny-c", sel("pod", "c"), ingressOnly)),
				expect: func(e *expectation) { e.isolateIngress("z/c") }},
			{name: "relabel z/c to pod=d", podLabels: map[string]map[string]string{"z/c": {"pod": "d"}},
				expect: func(e *expectation) {}},
			{name: "relabel z/c back", podLabels: map[string]map[string]string{"z/c": {"pod": "c"}},
				expect: func(e *expectation) { e.isolateIngress("z/c") }},
		}},
	}
}
