package test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/test/kerneltest"
	"github.com/nftpol/nftpol/test/testbed"
)

const (
	// tamperVerifyInterval is the agent's --verify-interval here.
	tamperVerifyInterval = time.Second
	// tamperRepairBound is how long after a tampering the table must be
	// back to what the agent committed: one verify interval, then a
	// margin for the verification and the replace on two busy cores.
	tamperRepairBound = tamperVerifyInterval + 4*time.Second
	// tamperHoleWatch is how long hole probes keep running after the
	// repair bound: a probe that gets through then is a hole that stayed
	// open.
	tamperHoleWatch = 2 * time.Second
	// driftLogLine is what the agent logs when its verification finds
	// the table changed (controllers.Syncer).
	driftLogLine = "table differs from what was committed"
	// unservedPort is a port no testbed pod listens on, so a probe can
	// use it as its source port (the pod's own listeners on 80 and 81
	// would refuse the bind).
	unservedPort = 8080
)

// tamperPolicies all isolate x/a, which lives on node 1: ingress from the
// pods of namespace y on the named port serve-80-tcp (a peer hash set and
// a named-port set), ingress from z/b's addresses as ipBlocks (interval
// sets) on TCP 81 and TCP 8080, egress to every pod labeled pod=b (a peer
// hash set).
func tamperPolicies(m *modelBed) []*networkingv1.NetworkPolicy {
	zb := m.PodPrefixes("z/b")
	return []*networkingv1.NetworkPolicy{
		withIngress(policy("x", "in-from-y", sel("pod", "a"), nil),
			ingressPorts(from(nsPeer(selPtr("ns", "y"))), namedPort(tcp, "serve-80-tcp"))),
		withIngress(policy("x", "in-from-block", sel("pod", "a"), nil),
			ingressPorts(from(blockPeer(zb[0]), blockPeer(zb[1])), port(tcp, 81), port(tcp, unservedPort))),
		withEgress(policy("x", "eg-to-b", sel("pod", "a"), egressOnly),
			to(nsPodPeer(&metav1.LabelSelector{}, selPtr("pod", "b")))),
	}
}

// tamperExpect is what those policies allow.
var tamperExpect = step{name: "tamper policies", expect: func(e *expectation) {
	e.isolateIngress("x/a")
	if e.proto == "TCP" && e.port == 80 {
		e.allow("y/*", "x/a")
	}
	if e.proto == "TCP" && e.port == 81 {
		e.allow("z/b", "x/a")
	}
	e.isolateEgress("x/a", "*/b")
}}

// hole is one connection the policies deny, probed over and over from
// the moment of a tampering until after it must have been repaired.
type hole struct {
	from, to string // pod keys
	family   int
	proto    testbed.Proto
	port     int
	srcPort  int // 0: any
}

func (h hole) String() string {
	if h.proto == icmpProbe {
		return fmt.Sprintf("%s -> %s ICMP echo IPv4", h.from, h.to)
	}
	src := ""
	if h.srcPort != 0 {
		src = fmt.Sprintf(" from source port %d", h.srcPort)
	}
	return fmt.Sprintf("%s -> %s %s/%d IPv%d%s", h.from, h.to, h.proto, h.port, h.family, src)
}

// tampering is one change made to the table from outside.
type tampering struct {
	name string
	// apply makes the change with the nft command.
	apply func(t *testing.T, tb *tamperBed)
	// holes are denied connections the change lets through; for a change
	// that opens nothing, denied connections it must not open either.
	holes []hole
}

// Holes used by several tamperings: z/c is on x/a's node and in no peer
// set, so the policies deny it everything to x/a.
var (
	zcToXaTCP80v4 = hole{from: "z/c", to: "x/a", family: 4, proto: testbed.TCP, port: 80}
	zcToXaTCP80v6 = hole{from: "z/c", to: "x/a", family: 6, proto: testbed.TCP, port: 80}
	zcToXaUDP81v4 = hole{from: "z/c", to: "x/a", family: 4, proto: testbed.UDP, port: 81}
)

func tamperings() []tampering {
	return []tampering{
		{
			name: "ct-state-new-accepted-in-base-chain",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.replaceRule(t, nft.ChainForwardIngress, "ct state established,related accept",
					func(r string) string {
						return strings.Replace(r, "ct state established,related", "ct state new,established,related", 1)
					})
			},
			holes: []hole{zcToXaTCP80v4, zcToXaTCP80v6, zcToXaUDP81v4},
		},
		{
			name: "peer-lookup-inverted",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.replaceRule(t, tb.polY, "ip saddr @"+tb.peerY4+" ", func(r string) string {
					return strings.Replace(r, "ip saddr @", "ip saddr != @", 1)
				})
			},
			holes: []hole{zcToXaTCP80v4},
		},
		{
			name: "peer-lookup-inverted-ipv6",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.replaceRule(t, tb.polY, "ip6 saddr @"+tb.peerY6+" ", func(r string) string {
					return strings.Replace(r, "ip6 saddr @", "ip6 saddr != @", 1)
				})
			},
			holes: []hole{zcToXaTCP80v6},
		},
		{
			name: "egress-peer-lookup-inverted",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.replaceRule(t, tb.polEg, "ip daddr @", func(r string) string {
					return strings.Replace(r, "ip daddr @", "ip daddr != @", 1)
				})
			},
			holes: []hole{{from: "x/a", to: "z/c", family: 4, proto: testbed.TCP, port: 80}},
		},
		{
			name: "sport-for-dport",
			apply: func(t *testing.T, tb *tamperBed) {
				// The rule's two ports are one set of (protocol . port).
				tb.replaceRule(t, tb.polBlock, "ip saddr @"+tb.block4+" meta l4proto . th dport @", func(r string) string {
					return strings.Replace(r, "th dport", "th sport", 1)
				})
			},
			// z/b may reach x/a on 81 and 8080 only; with sport it
			// reaches any port of x/a from source port 8080.
			holes: []hole{{from: "z/b", to: "x/a", family: 4, proto: testbed.TCP, port: 80, srcPort: unservedPort}},
		},
		{
			name: "base-chain-policy-drop",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.nft(t, "chain", "inet", "nftpol", nft.ChainForwardIngress, "{ policy drop; }")
			},
			holes: []hole{zcToXaTCP80v4},
		},
		{
			name: "base-chain-priority-changed",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.reloadEdited(t, func(text string) string {
					return editObject(text, "chain "+nft.ChainForwardIngress, func(body string) string {
						return strings.Replace(body, "priority filter + 1;", "priority filter + 50;", 1)
					})
				})
			},
			holes: []hole{zcToXaTCP80v4},
		},
		{
			name: "foreign-icmp-echo-accept-atop-isolation-chain",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.nft(t, "insert", "rule", "inet", "nftpol", tb.isoIn, "icmp type echo-request accept")
			},
			holes: []hole{{from: "z/c", to: "x/a", family: 4, proto: icmpProbe}, zcToXaTCP80v4},
		},
		{
			name: "foreign-tcp-accept-atop-isolation-chain",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.nft(t, "insert", "rule", "inet", "nftpol", tb.isoIn, "meta l4proto tcp accept")
			},
			holes: []hole{zcToXaTCP80v4, zcToXaTCP80v6, {from: "z/c", to: "x/a", family: 4, proto: testbed.TCP, port: 81}},
		},
		{
			name: "isolation-chain-deny-moved-first",
			apply: func(t *testing.T, tb *tamperBed) {
				// The last rule of the isolation chain (the final deny)
				// moves before the jumps to the policy chains.
				rules := tb.handles(t, tb.isoIn)
				first, last := rules[0], rules[len(rules)-1]
				tb.script(t, fmt.Sprintf("delete rule inet nftpol %s handle %d\ninsert rule inet nftpol %s position %d %s\n",
					tb.isoIn, last.handle, tb.isoIn, first.handle, last.text))
			},
			holes: []hole{zcToXaTCP80v4},
		},
		{
			name: "peer-set-element-added",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.nft(t, "add", "element", "inet", "nftpol", tb.peerY4, "{ "+tb.m.bed.Pod("z/c").IPv4.String()+" }")
			},
			holes: []hole{zcToXaTCP80v4},
		},
		{
			name: "peer-set-element-removed",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.nft(t, "delete", "element", "inet", "nftpol", tb.peerY4, "{ "+tb.m.bed.Pod("y/a").IPv4.String()+" }")
			},
			holes: []hole{zcToXaTCP80v4},
		},
		{
			name: "verdict-map-element-jumps-to-policy-chain",
			apply: func(t *testing.T, tb *tamperBed) {
				// x/a's ingress element skips its isolation chain: the
				// policy chain returns, and the base chain accepts.
				xa := tb.m.bed.Pod("x/a").IPv4.String()
				tb.script(t, fmt.Sprintf("delete element inet nftpol %s { %s }\nadd element inet nftpol %s { %s : jump %s }\n",
					nft.MapIngressV4, xa, nft.MapIngressV4, xa, tb.polY))
			},
			holes: []hole{zcToXaTCP80v4, zcToXaUDP81v4},
		},
		{
			name: "egress-verdict-map-element-removed",
			apply: func(t *testing.T, tb *tamperBed) {
				// x/a is no longer egress-isolated, on the forward hook
				// and to its node alike.
				tb.nft(t, "delete", "element", "inet", "nftpol", nft.MapEgressV4, "{ "+tb.m.bed.Pod("x/a").IPv4.String()+" }")
			},
			holes: []hole{{from: "x/a", to: "z/c", family: 4, proto: testbed.TCP, port: 80}, {from: "x/a", to: "y/a", family: 4, proto: testbed.UDP, port: 81}},
		},
		{
			name: "peer-set-recreated-with-flags-interval",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.reloadEdited(t, func(text string) string {
					return editObject(text, "set "+tb.peerY4, func(body string) string {
						return strings.Replace(body, "type ipv4_addr\n", "type ipv4_addr\n\t\tflags interval\n", 1)
					})
				})
			},
			holes: []hole{zcToXaTCP80v4},
		},
		{
			name: "ipblock-set-recreated-without-flags-interval",
			apply: func(t *testing.T, tb *tamperBed) {
				tb.reloadEdited(t, func(text string) string {
					return editObject(text, "set "+tb.block4, func(body string) string {
						return strings.Replace(body, "\t\tflags interval\n", "", 1)
					})
				})
			},
			holes: []hole{zcToXaTCP80v4},
		},
	}
}

// TestTamperedTableIsRepaired changes the table of x/a's node from
// outside with the nft command, in each of the ways a table can be made
// to decide otherwise, while the agent runs with --verify-interval 1s.
// For each tampering it asserts that (1) no connection the policies deny
// gets through once the repair bound has passed (probes from the moment
// of the tampering on, then full matrices), (2) the table is again
// exactly what the agent committed, as nft lists it, within the bound,
// and (3) the agent logged the drift. A change the agent's verification
// does not see fails all three.
func TestTamperedTableIsRepaired(t *testing.T) {
	kerneltest.Require(t, kerneltest.ControlPlane, kerneltest.NftBinary)
	tb := startTamperBed(t, e2ePrefix+"tamper")
	start := time.Now()
	for _, tc := range tamperings() {
		t.Run(tc.name, func(t *testing.T) { tb.run(t, tc) })
	}
	t.Logf("%d tamperings in %s", len(tamperings()), time.Since(start).Round(time.Millisecond))
}

func startTamperBed(t *testing.T, prefix string) *tamperBed {
	t.Helper()
	m := startModel(t, prefix, "--deny-action", "reject", "--verify-interval", tamperVerifyInterval.String())
	for _, p := range tamperPolicies(m) {
		m.applyPolicy(t, p)
	}
	if _, failures := m.converge(tamperExpect); len(failures) > 0 {
		t.Fatalf("the tamper policies are not in force:\n%s", strings.Join(failures, "\n"))
	}
	xa := m.bed.Pod("x/a")
	tb := &tamperBed{m: m, node: m.bed.Node(xa.Node)}
	tb.agent = m.agents[tb.node.Name]
	listing := tb.list(t)
	table, err := parseNftTable(listing)
	if err != nil {
		t.Fatalf("parsing the table: %v\n%s", err, listing)
	}
	tb.baseline = table.canonical()
	// Find the objects by what they hold, not by the agent's names.
	find := func(name string, err error) string {
		if err != nil {
			t.Fatalf("the committed table lacks an object the tamperings need: %v\n%s", err, listing)
		}
		return name
	}
	tb.polY = find(table.chainWith(`comment "x/in-from-y ingress[0]"`))
	tb.polBlock = find(table.chainWith(`comment "x/in-from-block ingress[0]"`))
	tb.polEg = find(table.chainWith(`comment "x/eg-to-b egress[0]"`))
	if isos := table.chainsWithPrefix("iso-in-"); len(isos) != 1 {
		t.Fatalf("want one ingress isolation chain on %s, got %v\n%s", tb.node.Name, isos, listing)
	} else {
		tb.isoIn = isos[0]
	}
	var ys []string
	for _, p := range []string{"y/a", "y/b", "y/c"} {
		ys = append(ys, m.bed.Pod(p).IPv4.String())
	}
	tb.peerY4 = find(table.setWithElements(ys, "type ipv4_addr"))
	var ys6 []string
	for _, p := range []string{"y/a", "y/b", "y/c"} {
		ys6 = append(ys6, m.bed.Pod(p).IPv6.String())
	}
	tb.peerY6 = find(table.setWithElements(ys6, "type ipv6_addr"))
	tb.block4 = find(table.setWithElements([]string{m.bed.Pod("z/b").IPv4.String()}, "flags interval"))
	return tb
}

// tamperBed is the model with the tamper policies in force, and what the
// tamperings need to know about x/a's node and its table.
type tamperBed struct {
	m     *modelBed
	node  *testbed.Node
	agent *testbed.Agent
	// baseline is the canonical listing of the table the agent committed.
	baseline string
	// Names in the table, found by content.
	isoIn, polY, polBlock, polEg string
	peerY4, peerY6, block4       string
}

func (tb *tamperBed) nft(t *testing.T, args ...string) string {
	t.Helper()
	return kerneltest.Nft(t, tb.node.NetNSPath, args...)
}

// list returns `nft -s list table inet nftpol` (stateless: no counter
// values, which change with every probe).
func (tb *tamperBed) list(t *testing.T) string {
	t.Helper()
	return tb.nft(t, "-s", "list", "table", "inet", "nftpol")
}

// canonical returns the canonical listing, or "" with the reason when the
// table cannot be listed or parsed (it may be in the middle of a repair).
func (tb *tamperBed) canonical() (string, error) {
	out, err := kerneltest.NftErr(tb.node.NetNSPath, "-s", "list", "table", "inet", "nftpol")
	if err != nil {
		return "", err
	}
	table, err := parseNftTable(out)
	if err != nil {
		return "", err
	}
	return table.canonical(), nil
}

// script loads an nft script as one transaction.
func (tb *tamperBed) script(t *testing.T, text string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "tamper.nft")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := kerneltest.NftErr(tb.node.NetNSPath, "-f", path); err != nil {
		t.Fatalf("loading the tampering: %v\nscript:\n%s\noutput: %s", err, text, out)
	}
}

type ruleHandle struct {
	handle int
	text   string
}

var handleRE = regexp.MustCompile(`^(.*) # handle (\d+)$`)

// handles lists a chain's rules with their handles, in order.
func (tb *tamperBed) handles(t *testing.T, chain string) []ruleHandle {
	t.Helper()
	out := tb.nft(t, "-a", "-s", "list", "chain", "inet", "nftpol", chain)
	var rules []ruleHandle
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		m := handleRE.FindStringSubmatch(line)
		if m == nil || strings.HasPrefix(line, "chain ") || strings.HasPrefix(line, "table ") {
			continue
		}
		h, _ := strconv.Atoi(m[2])
		rules = append(rules, ruleHandle{handle: h, text: m[1]})
	}
	if len(rules) == 0 {
		t.Fatalf("chain %s has no rules:\n%s", chain, out)
	}
	return rules
}

// replaceRule replaces the one rule of a chain containing match by its
// edited text, in place (`nft replace rule ... handle N`).
func (tb *tamperBed) replaceRule(t *testing.T, chain, match string, edit func(string) string) {
	t.Helper()
	var found []ruleHandle
	for _, r := range tb.handles(t, chain) {
		if strings.Contains(r.text+" ", match) {
			found = append(found, r)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d rules of chain %s contain %q, want 1: %v", len(found), chain, match, found)
	}
	edited := edit(found[0].text)
	if edited == found[0].text {
		t.Fatalf("the edit changed nothing in rule %q", found[0].text)
	}
	tb.script(t, fmt.Sprintf("replace rule inet nftpol %s handle %d %s\n", chain, found[0].handle, edited))
}

// reloadEdited replaces the whole table by an edited listing of itself in
// one transaction, for changes nft cannot make in place (a set's flags, a
// base chain's priority).
func (tb *tamperBed) reloadEdited(t *testing.T, edit func(string) string) {
	t.Helper()
	text := tb.list(t)
	edited := edit(text)
	if edited == text {
		t.Fatalf("the edit changed nothing in the listing:\n%s", text)
	}
	tb.script(t, "delete table inet nftpol\n"+edited)
}

// editObject applies edit to the body of one object of a listing (from
// its header line "\t<header> {" to its closing "\t}").
func editObject(text, header string, edit func(string) string) string {
	open := "\t" + header + " {\n"
	i := strings.Index(text, open)
	if i < 0 {
		return text
	}
	start := i + len(open)
	end := strings.Index(text[start:], "\n\t}\n")
	if end < 0 {
		return text
	}
	end += start + 1
	return text[:start] + edit(text[start:end]) + text[end:]
}

// holeResult is what the probes of one hole saw.
type holeResult struct {
	h                   hole
	probes, reached     int
	lastReached         time.Duration // since the tampering
	reachedAfterBound   int
	firstAfterBoundTime time.Duration
}

// probeHole probes a hole once; nil means it got through.
func (tb *tamperBed) probeHole(h hole) error {
	from, to := tb.m.bed.Pod(h.from), tb.m.bed.Pod(h.to)
	if h.proto == icmpProbe {
		return pingIPv4(from, to.IPv4, 300*time.Millisecond)
	}
	return testbed.ProbeFromPort(from, h.srcPort, to.Addr(h.family), h.proto, h.port, to.Key(), 300*time.Millisecond)
}

// watchHole probes a hole from the tampering until the bound plus the
// watch time, at most every 100 ms and 200 times.
func (tb *tamperBed) watchHole(h hole, tampered time.Time) holeResult {
	res := holeResult{h: h}
	end := tampered.Add(tamperRepairBound + tamperHoleWatch)
	for res.probes < 200 && time.Now().Before(end) {
		sent := time.Since(tampered)
		err := tb.probeHole(h)
		res.probes++
		if err == nil {
			res.reached++
			res.lastReached = sent
			if sent > tamperRepairBound {
				if res.reachedAfterBound == 0 {
					res.firstAfterBoundTime = sent
				}
				res.reachedAfterBound++
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return res
}

func (tb *tamperBed) run(t *testing.T, tc tampering) {
	tb.restore(t)
	driftsBefore := strings.Count(tb.agent.Log(), driftLogLine)
	logBefore := len(tb.agent.Log())
	for _, h := range tc.holes {
		if tb.m.expected(tamperExpect, testbed.ProbeSpec{Family: h.family, Proto: h.proto, Port: h.port}).Get(h.from, h.to) {
			t.Fatalf("test bug: %s is allowed by the policies, not a hole", h)
		}
		// The probe must fail while the table is intact, or its
		// successes later would prove nothing.
		if err := tb.probeHole(h); err == nil {
			t.Fatalf("%s got through before the tampering", h)
		}
	}

	tc.apply(t, tb)
	tampered := time.Now()

	results := make([]holeResult, len(tc.holes))
	var wg sync.WaitGroup
	for i, h := range tc.holes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = tb.watchHole(h, tampered)
		}()
	}
	// Poll the table until it is the committed one again, or the bound.
	var repairedAfter time.Duration
	var last string
	var lastErr error
	sawTampered := false
	for attempt := 0; attempt < 500; attempt++ {
		last, lastErr = tb.canonical()
		if lastErr == nil && last == tb.baseline {
			repairedAfter = time.Since(tampered)
			break
		}
		sawTampered = true
		if time.Since(tampered) > tamperRepairBound {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()

	// (2) the table is back, exactly.
	switch {
	case repairedAfter == 0 && lastErr != nil:
		t.Errorf("table not restored within %s of the tampering (verify interval %s + margin): listing it fails: %v",
			tamperRepairBound, tamperVerifyInterval, lastErr)
	case repairedAfter == 0:
		t.Errorf("table not restored within %s of the tampering (verify interval %s + margin); it differs from what the agent committed:\n%s",
			tamperRepairBound, tamperVerifyInterval, lineDiff(tb.baseline, last))
	case !sawTampered:
		t.Logf("the table was already back at the first listing, %s after the tampering", repairedAfter.Round(time.Millisecond))
	default:
		t.Logf("table exactly as committed again %s after the tampering", repairedAfter.Round(time.Millisecond))
	}
	// (1) no denied connection after the bound: the probes that ran
	// from the tampering on, then full matrices.
	for _, r := range results {
		if r.reachedAfterBound > 0 {
			t.Errorf("hole stayed open: %s got through %d times after the repair bound (%s), the first %s after the tampering; %d of %d probes in all",
				r.h, r.reachedAfterBound, tamperRepairBound, r.firstAfterBoundTime.Round(time.Millisecond), r.reached, r.probes)
		} else if r.reached > 0 {
			t.Logf("%s got through %d times while tampered, the last %s after the tampering, then never again in %d probes",
				r.h, r.reached, r.lastReached.Round(time.Millisecond), r.probes-r.reached)
		}
	}
	tb.checkMatrices(t, repairedAfter != 0)
	// (3) the agent saw it, and is still running.
	log := tb.agent.Log()
	if strings.Count(log, driftLogLine) <= driftsBefore {
		t.Errorf("the agent logged no drift (%q) after the tampering", driftLogLine)
	}
	if i := strings.Index(log[min(logBefore, len(log)):], "panic"); i >= 0 {
		// From the start of the line that reports it.
		start := strings.LastIndex(log[:logBefore+i], "\n") + 1
		excerpt := log[start:]
		t.Errorf("the agent panicked after the tampering:\n%s", excerpt[:min(len(excerpt), 1500)])
	}
	if tb.agent.Exited() {
		t.Errorf("the agent exited after the tampering")
	}
}

// checkMatrices probes every pair once: a denied cell that is reachable
// is a hole after the bound, whatever the timing. When the table was
// repaired, allowed cells that do not answer get the usual retries (a
// slow probe is no failure); when it was not, that failure is reported
// already.
func (tb *tamperBed) checkMatrices(t *testing.T, repaired bool) {
	t.Helper()
	observed, _ := tb.m.convergeWithin(tamperExpect, 0)
	for spec, got := range observed {
		want := tb.m.expected(tamperExpect, spec)
		if wrong := got.Leaks(want); len(wrong) > 0 {
			t.Errorf("after the repair bound, %s: denied connections got through:\n%s", spec, strings.Join(wrong, "\n"))
		}
	}
	if !repaired {
		return
	}
	if _, failures := tb.m.converge(tamperExpect); len(failures) > 0 {
		t.Errorf("the matrices did not return to the policies' within 20 s:\n%s", strings.Join(failures, "\n"))
	}
}

// restore makes sure the agent runs and the table is the baseline before
// a tampering; after a tampering the agent did not repair, a restart
// replaces the table whole.
func (tb *tamperBed) restore(t *testing.T) {
	t.Helper()
	if got, err := tb.canonical(); err == nil && got == tb.baseline && !tb.agent.Exited() {
		return
	}
	t.Logf("the table or agent is not as committed before this tampering: restarting the agent of %s", tb.node.Name)
	_ = tb.agent.Kill()
	if err := tb.agent.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := tb.agent.WaitReady(t.Context(), 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var got string
	var err error
	for attempt := 0; attempt < 100; attempt++ {
		if got, err = tb.canonical(); err == nil && got == tb.baseline {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the restarted agent did not commit the baseline table within 10 s (%v):\n%s", err, lineDiff(tb.baseline, got))
}
