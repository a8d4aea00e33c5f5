package selectors_test

import (
	"fmt"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

// BenchmarkBuildModel resolves a whole cluster into one node's model, as
// every sync does: 110 local pods, dense policies (selectorstest.ScaleCluster).
func BenchmarkBuildModel(b *testing.B) {
	for _, size := range []struct{ pods, policies int }{{10_000, 1_000}, {100_000, 10_000}} {
		s := selectorstest.ScaleCluster(size.pods, size.policies, 110)
		b.Run(fmt.Sprintf("pods=%d/policies=%d", size.pods, size.policies), func(b *testing.B) {
			b.ReportAllocs()
			var m *selectors.Model
			for b.Loop() {
				m, _ = selectors.BuildModel(selectorstest.ScaleNode, s)
			}
			elems := 0
			for _, set := range m.AddrSets {
				elems += len(set.Addrs) + len(set.Ranges)
			}
			b.ReportMetric(float64(len(m.Pods)), "isolated-pods")
			b.ReportMetric(float64(len(m.Policies)), "local-policies")
			b.ReportMetric(float64(elems), "peer-addrs")
		})
	}
}
