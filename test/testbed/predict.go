package testbed

import (
	corev1 "k8s.io/api/core/v1"

	"github.com/nftpol/nftpol/selectors/reference"
)

// PredictMatrix is the matrix the reference evaluator predicts for spec
// over pods, from the cluster's objects (reference.Read). The cell of a pod
// to itself is the evaluator's too: it always allows it.
func PredictMatrix(cl *reference.Cluster, pods []*Pod, spec ProbeSpec) *Matrix {
	proto := corev1.ProtocolTCP
	if spec.Proto == UDP {
		proto = corev1.ProtocolUDP
	}
	keys := make([]string, len(pods))
	for i, p := range pods {
		keys[i] = p.Key()
	}
	m := NewMatrix(keys, true)
	for _, from := range pods {
		for _, to := range pods {
			v := reference.Evaluate(cl, reference.Packet{Src: from.Addr(spec.Family), Dst: to.Addr(spec.Family), Protocol: proto, Port: int32(spec.Port)})
			m.Set(from.Key(), to.Key(), v.Allowed)
		}
	}
	return m
}
