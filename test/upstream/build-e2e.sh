#!/usr/bin/env bash
# Builds the upstream conformance suites test/upstream runs, from the Go
# module proxy, into OUT_DIR:
#   - netpol.test: the [sig-network] Netpol e2e suite of k8s.io/kubernetes,
#     its sources as they are; only the entry point
#     (test/upstream/e2e/netpol_e2e_test.go) is ours;
#   - ginkgo: the command that runs it on several processes, from the
#     version k8s.io/kubernetes requires, the one the suite links;
#   - cnp-conformance.test: the conformance/ test package of
#     sigs.k8s.io/network-policy-api, unmodified, entry point included,
#     built inside a copy of that module so it links exactly the versions
#     its own go.sum pins; clusternetworkpolicies.yaml, its experimental
#     ClusterNetworkPolicy CRD (a superset of the standard one).
#
# usage: build-e2e.sh K8S_VERSION ETCD_VERSION NETWORK_POLICY_API_VERSION OUT_DIR
#
# netpol.test builds in the same throwaway module layout as test/envtest
# and test/cluster (test/k8s-module.sh), so every package those already
# compiled (client-go, the API types, ...) comes out of the Go build cache.
# OUT_DIR gets a .complete stamp of the versions only when everything
# built, so a half-built cache is never mistaken for a complete one.
set -euo pipefail

k8s_version=${1:?kubernetes version, e.g. v1.37.2}
etcd_version=${2:?etcd server version, e.g. v3.7.3}
npapi_version=${3:?network-policy-api version, e.g. v0.3.0}
out_dir=${4:?output directory}

src=$(cd "$(dirname "$0")" && pwd)
stamp="k8s $k8s_version etcd $etcd_version npapi $npapi_version netpol.test ginkgo cnp-conformance.test $(sha256sum "$src/e2e/netpol_e2e_test.go" | cut -c1-16)"
if [[ -f "$out_dir/.complete" && "$(cat "$out_dir/.complete")" == "$stamp" ]]; then
  echo "upstream e2e suites present in $out_dir"
  exit 0
fi

# shellcheck source=../k8s-module.sh
source "$src/../k8s-module.sh"
work=$(mktemp -d /tmp/nftpol-upstream-build.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/netpole2e"
cp "$src/e2e/netpol_e2e_test.go" "$work/netpole2e/"
k8s_module "$work" nftpol.local/upstream-e2e "$k8s_version" "$etcd_version" \
  github.com/onsi/ginkgo/v2/ginkgo

mkdir -p "$out_dir.tmp"
# Parts already in $out_dir.tmp were built by an interrupted run of this
# same script: only the missing ones build.
if [[ ! -x "$out_dir.tmp/netpol.test" ]]; then
  start=$SECONDS
  echo "building the Netpol e2e suite of k8s.io/kubernetes $k8s_version"
  (cd "$work" && CGO_ENABLED=0 go test -c -trimpath -ldflags "$(k8s_ldflags "$k8s_version")" \
    -o "$out_dir.tmp/netpol.test.part" ./netpole2e)
  mv "$out_dir.tmp/netpol.test.part" "$out_dir.tmp/netpol.test"
  echo "built netpol.test in $((SECONDS - start))s"
fi
if [[ ! -x "$out_dir.tmp/ginkgo" ]]; then
  start=$SECONDS
  (cd "$work" && CGO_ENABLED=0 go build -trimpath -o "$out_dir.tmp/ginkgo" github.com/onsi/ginkgo/v2/ginkgo)
  echo "built ginkgo in $((SECONDS - start))s"
fi

if [[ ! -x "$out_dir.tmp/cnp-conformance.test" ]]; then
  start=$SECONDS
  echo "building the conformance suite of sigs.k8s.io/network-policy-api $npapi_version"
  npapi=$(go mod download -json "sigs.k8s.io/network-policy-api@$npapi_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  cp -r "$npapi" "$work/npapi"
  chmod -R u+w "$work/npapi"
  (cd "$work/npapi" && CGO_ENABLED=0 go test -c -trimpath -o "$out_dir.tmp/cnp-conformance.test.part" ./conformance)
  cp "$work/npapi/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml" \
    "$out_dir.tmp/clusternetworkpolicies.yaml"
  mv "$out_dir.tmp/cnp-conformance.test.part" "$out_dir.tmp/cnp-conformance.test"
  echo "built cnp-conformance.test in $((SECONDS - start))s"
fi

echo "$stamp" >"$out_dir.tmp/.complete"
rm -rf "$out_dir"
mv "$out_dir.tmp" "$out_dir"
echo "upstream e2e suites built in $out_dir"
