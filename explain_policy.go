package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/nftpol/nftpol/controllers"
	"github.com/nftpol/nftpol/nft"
	"github.com/nftpol/nftpol/selectors"
)

// runExplainPolicy answers "is this policy in force on this node": it
// compiles the node's table from the API server's objects twice, with and
// without the policy, and the difference is what the policy puts in the
// table (its sets, chains, rules and elements). Each piece is then looked
// up in the table the kernel holds, read back, never written: a piece is
// committed when turning the kernel's table into the compiled one would
// not need it.
func runExplainPolicy(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var kubeconfig, node, key string
	tc, err := openTable("nftpol explain --policy", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&kubeconfig, "kubeconfig", "", "path to a kubeconfig (default $KUBECONFIG or in-cluster)")
		fs.StringVar(&node, "node", "", "the node whose table this is (the agent's --node-name)")
		fs.StringVar(&key, "policy", "", "the NetworkPolicy NAMESPACE/NAME")
	})
	if err != nil {
		return err
	}
	defer tc.enforcer.Close()
	if node == "" || key == "" {
		return errors.New("explain --policy needs --node and --policy NAMESPACE/NAME")
	}
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return err
	}
	reader, err := controllers.NewReader(cfg)
	if err != nil {
		return err
	}
	state, err := controllers.ReadState(ctx, reader)
	if err != nil {
		return err
	}
	committed, err := tc.enforcer.ReadTable()
	if err != nil {
		return fmt.Errorf("reading table inet %s: %w", tc.table, err)
	}
	out, err := explainPolicy(state, node, key, nft.Config{Table: tc.table}, committed)
	if err != nil {
		return err
	}
	_, err = io.WriteString(stdout, out)
	return err
}

// explainPolicy reports which pieces of policy key the committed table
// holds.
func explainPolicy(state *selectors.State, node, key string, cfg nft.Config, committed *nft.Ruleset) (string, error) {
	var without []*networkingv1.NetworkPolicy
	found, audit := false, false
	for _, p := range state.Policies {
		if p.Namespace+"/"+p.Name == key {
			found, audit = true, p.Annotations[selectors.ModeAnnotation] == selectors.ModeAudit
			continue
		}
		without = append(without, p)
	}
	if !found {
		return "", fmt.Errorf("no NetworkPolicy %s", key)
	}
	compile := func(s *selectors.State) (*nft.Ruleset, error) {
		c, err := nft.NewCompiler(cfg)
		if err != nil {
			return nil, err
		}
		m, _ := selectors.BuildModel(node, s)
		return c.Compile(m), nil
	}
	with, err := compile(state)
	if err != nil {
		return "", err
	}
	reduced := *state
	reduced.Policies = without
	base, err := compile(&reduced)
	if err != nil {
		return "", err
	}
	pieces := planLines(nft.Diff(base, with).String(), "add ")
	missing := map[string]bool{}
	for _, l := range planLines(nft.Diff(committed, with).String(), "") {
		missing[l] = true
	}
	var b strings.Builder
	if len(pieces) == 0 {
		fmt.Fprintf(&b, "policy %s puts nothing in the table of node %s (it selects no pod of the node, or other policies already allow what it allows)\n", key, node)
		return b.String(), nil
	}
	notIn := 0
	for _, l := range pieces {
		if missing[l] {
			notIn++
		}
	}
	switch {
	case audit && notIn == 0:
		fmt.Fprintf(&b, "policy %s is in audit mode (%s=%s) on node %s: it denies nothing; all %d pieces of its hypothesis chains and counters are committed\n", key, selectors.ModeAnnotation, selectors.ModeAudit, node, len(pieces))
	case audit:
		fmt.Fprintf(&b, "policy %s is in audit mode (%s=%s) on node %s: it denies nothing; %d of %d pieces of its hypothesis chains and counters are not committed\n", key, selectors.ModeAnnotation, selectors.ModeAudit, node, notIn, len(pieces))
	case notIn == 0:
		fmt.Fprintf(&b, "policy %s is in force on node %s: all %d pieces are committed\n", key, node, len(pieces))
	default:
		fmt.Fprintf(&b, "policy %s is NOT fully in force on node %s: %d of %d pieces are not committed\n", key, node, notIn, len(pieces))
	}
	for _, l := range pieces {
		mark := "committed    "
		if missing[l] {
			mark = "NOT committed"
		}
		fmt.Fprintf(&b, "  %s  %s\n", mark, l)
	}
	return b.String(), nil
}

// planLines splits a plan's nft text into one line per object, with one
// element per element line, keeping the lines that start with prefix.
func planLines(plan, prefix string) []string {
	var out []string
	for _, l := range strings.Split(plan, "\n") {
		if l == "" || !strings.HasPrefix(l, prefix) {
			continue
		}
		head, elems, ok := strings.Cut(l, " { ")
		if !ok || !strings.Contains(head, " element ") {
			out = append(out, l)
			continue
		}
		for _, e := range strings.Split(strings.TrimSuffix(elems, " }"), ", ") {
			out = append(out, head+" { "+e+" }")
		}
	}
	return out
}
