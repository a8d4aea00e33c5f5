#!/usr/bin/env bash
# Builds the [sig-network] Netpol e2e suite of k8s.io/kubernetes into one
# test binary, OUT_DIR/netpol.test, and the ginkgo command that runs it on
# several processes, OUT_DIR/ginkgo, from the Go module proxy. The suite's
# sources compile as they are; only the entry point
# (test/upstream/e2e/netpol_e2e_test.go) is ours. ginkgo comes from the
# version k8s.io/kubernetes requires, the one the suite links.
#
# usage: build-e2e.sh K8S_VERSION ETCD_VERSION OUT_DIR
#
# It builds in the same throwaway module layout as test/envtest and
# test/cluster (test/k8s-module.sh), so every package those already
# compiled (client-go, the API types, ...) comes out of the Go build cache.
# OUT_DIR gets a .complete stamp of the versions only when both built, so
# a half-built cache is never mistaken for a complete one.
set -euo pipefail

k8s_version=${1:?kubernetes version, e.g. v1.37.2}
etcd_version=${2:?etcd server version, e.g. v3.7.3}
out_dir=${3:?output directory}

src=$(cd "$(dirname "$0")" && pwd)
stamp="k8s $k8s_version etcd $etcd_version netpol.test ginkgo $(sha256sum "$src/e2e/netpol_e2e_test.go" | cut -c1-16)"
if [[ -f "$out_dir/.complete" && "$(cat "$out_dir/.complete")" == "$stamp" ]]; then
  echo "upstream e2e suite present in $out_dir"
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

echo "$stamp" >"$out_dir.tmp/.complete"
rm -rf "$out_dir"
mv "$out_dir.tmp" "$out_dir"
echo "upstream e2e suite built in $out_dir"
