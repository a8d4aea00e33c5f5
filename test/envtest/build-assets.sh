#!/usr/bin/env bash
# Builds the envtest control-plane binaries (kube-apiserver, etcd) from the Go
# module proxy, because setup-envtest's download site is unreachable here.
#
# usage: build-assets.sh K8S_VERSION ETCD_VERSION OUT_DIR
#
# Both build in the throwaway module test/k8s-module.sh lays out (it
# requires k8s.io/kubernetes and the etcd server, every staging module
# pinned to its v0.Y.Z release), the same for every script that builds
# Kubernetes programs, so each reuses what the others compiled. The result
# lands in OUT_DIR only when both binaries built, so a half-built cache is
# never mistaken for a complete one.
set -euo pipefail
# shellcheck source=../k8s-module.sh
source "$(dirname "$0")/../k8s-module.sh"

k8s_version=${1:?kubernetes version, e.g. v1.37.2}
etcd_version=${2:?etcd server version, e.g. v3.7.3}
out_dir=${3:?output directory}

if [[ -x "$out_dir/kube-apiserver" && -x "$out_dir/etcd" ]]; then
  echo "envtest assets present in $out_dir"
  exit 0
fi

work=$(mktemp -d /tmp/nftpol-envtest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
k8s_module "$work" nftpol.local/envtest-assets "$k8s_version" "$etcd_version"
cd "$work"
mkdir -p "$out_dir.tmp"
echo "building kube-apiserver $k8s_version"
CGO_ENABLED=0 go build -trimpath -o "$out_dir.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
echo "building etcd $etcd_version"
CGO_ENABLED=0 go build -trimpath -o "$out_dir.tmp/etcd" go.etcd.io/etcd/server/v3
rm -rf "$out_dir"
mv "$out_dir.tmp" "$out_dir"
echo "envtest assets built in $out_dir"
