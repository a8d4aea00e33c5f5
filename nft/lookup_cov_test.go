package nft

import (
	"math/rand"
	"strings"
	"testing"

	"github.com/nftpol/nftpol/selectors"
	"github.com/nftpol/nftpol/selectors/selectorstest"
)

func TestLookupCoverageTmp(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	maps, elems, kinds := 0, 0, map[setKind]int{}
	for i := 0; i < 300; i++ {
		c := selectorstest.RandomChoices(r, 1024)
		cl := selectorstest.RandomCluster(c)
		s := selectorstest.State(cl)
		for _, node := range selectorstest.Nodes() {
			m, _ := selectors.BuildModel(node, s)
			rs := Compile(m, Config{lookupMinPolicies: 1})
			for n, set := range rs.sets {
				if strings.HasPrefix(n, "l-") {
					maps++
					elems += len(set.elems)
					kinds[set.kind] += len(set.elems)
				}
			}
		}
	}
	t.Logf("maps %d elems %d kinds %v", maps, elems, kinds)
}
