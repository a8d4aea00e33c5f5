package nft

import (
	"fmt"
	"sort"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/nftpol/nftpol/selectors"
)

// PolicyCounter is what one policy let through and turned away in one
// direction, from the kernel's rule counters. A packet denied at a pod that
// several policies isolate counts as denied for each of them.
type PolicyCounter struct {
	Policy                       string
	Direction                    selectors.Direction
	AllowedPackets, AllowedBytes uint64
	DeniedPackets, DeniedBytes   uint64
}

// Counters reads the counters of the policy and isolation chains of the
// committed table. Counters restart from zero when a chain is rewritten.
func (e *Enforcer) Counters() ([]PolicyCounter, error) {
	e.mu.Lock()
	committed := e.committed
	e.mu.Unlock()
	if committed == nil {
		return nil, nil
	}
	c, err := e.readConn()
	if err != nil {
		return nil, err
	}
	defer func() { _ = c.CloseLasting() }()
	type key struct {
		policy string
		dir    selectors.Direction
	}
	sums := map[key]*PolicyCounter{}
	for _, name := range committed.sortedChainNames() {
		spec := committed.chains[name]
		if len(spec.policies) == 0 {
			continue
		}
		rules, err := c.GetRules(e.table, &nftables.Chain{Name: name, Table: e.table})
		if err != nil {
			return nil, fmt.Errorf("reading chain %s: %w", name, err)
		}
		var packets, bytes uint64
		for _, r := range rules {
			for _, x := range r.Exprs {
				if ctr, ok := x.(*expr.Counter); ok {
					packets += ctr.Packets
					bytes += ctr.Bytes
				}
			}
		}
		for _, p := range spec.policies {
			k := key{p, spec.dir}
			pc := sums[k]
			if pc == nil {
				pc = &PolicyCounter{Policy: p, Direction: spec.dir}
				sums[k] = pc
			}
			if spec.isolates {
				pc.DeniedPackets += packets
				pc.DeniedBytes += bytes
			} else {
				pc.AllowedPackets += packets
				pc.AllowedBytes += bytes
			}
		}
	}
	out := make([]PolicyCounter, 0, len(sums))
	for _, pc := range sums {
		out = append(out, *pc)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Policy != out[j].Policy {
			return out[i].Policy < out[j].Policy
		}
		return out[i].Direction < out[j].Direction
	})
	return out, nil
}
