package testbed

import "github.com/nftpol/nftpol/selectors"

// PredictMatrix is the matrix the reference evaluator predicts for spec
// over pods, from a cluster state (controllers.ReadState). A pod always
// reaches itself.
func PredictMatrix(state *selectors.State, pods []*Pod, spec ProbeSpec) *Matrix {
	proto := selectors.ProtocolTCP
	if spec.Proto == UDP {
		proto = selectors.ProtocolUDP
	}
	keys := make([]string, len(pods))
	for i, p := range pods {
		keys[i] = p.Key()
	}
	m := NewMatrix(keys, true)
	for _, from := range pods {
		for _, to := range pods {
			if from != to {
				v := selectors.Evaluate(state, selectors.Packet{Src: from.Addr(spec.Family), Dst: to.Addr(spec.Family), Protocol: proto, Port: uint16(spec.Port)})
				m.Set(from.Key(), to.Key(), v.Allowed)
			}
		}
	}
	return m
}
