#!/usr/bin/env bash
# Builds the programs the local cluster runs besides kube-apiserver and etcd
# (test/envtest/build-assets.sh builds those): kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl and agnhost from k8s.io/kubernetes, and
# the CNI plugins from github.com/containernetworking/plugins, all from the
# Go module proxy, because no release download site is reachable here.
#
# usage: build-assets.sh K8S_VERSION ETCD_VERSION CNI_PLUGINS_VERSION OUT_DIR
#
# The Kubernetes programs build in the throwaway module test/k8s-module.sh
# lays out for every such script (same requirements, the staging modules
# pinned to their v0.Y.Z releases), so every package kube-apiserver already
# compiled comes out of the Go build cache. They report the version they
# were built from, as release builds do (the local cluster's kubelets
# report it too). The CNI plugins build with their own go.mod
# (go install pkg@version), so their dependencies never shift the
# Kubernetes module graph. Each binary's build time is printed. The result
# lands in OUT_DIR, with a .complete stamp of the versions, only when every
# binary built, so a half-built cache is never mistaken for a complete one.
set -euo pipefail
# shellcheck source=../k8s-module.sh
source "$(dirname "$0")/../k8s-module.sh"

k8s_version=${1:?kubernetes version, e.g. v1.37.2}
etcd_version=${2:?etcd server version, e.g. v3.7.3}
cni_version=${3:?CNI plugins version, e.g. v1.10.0}
out_dir=${4:?output directory}

k8s_bins=(kube-controller-manager kube-scheduler kube-proxy kubectl agnhost)
cni_bins=(ptp host-local loopback bridge portmap)
ldflags=$(k8s_ldflags "$k8s_version")
stamp="k8s $k8s_version etcd $etcd_version cni $cni_version bins ${k8s_bins[*]} ${cni_bins[*]}"

if [[ -f "$out_dir/.complete" && "$(cat "$out_dir/.complete")" == "$stamp" ]]; then
  echo "cluster assets present in $out_dir"
  exit 0
fi

work=$(mktemp -d /tmp/nftpol-cluster-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
k8s_module "$work" nftpol.local/cluster-assets "$k8s_version" "$etcd_version" \
  k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl \
  k8s.io/kubernetes/test/images/agnhost
cd "$work"
mkdir -p "$out_dir.tmp"

# A binary already in $out_dir.tmp was built by an interrupted run of
# this same script: only the missing ones build.
build() { # name package
  [[ -x "$out_dir.tmp/$1" ]] && return 0
  local start=$SECONDS
  echo "building $1"
  CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out_dir.tmp/$1.part" "$2"
  mv "$out_dir.tmp/$1.part" "$out_dir.tmp/$1"
  echo "built $1 in $((SECONDS - start))s"
}
for b in kube-controller-manager kube-scheduler kube-proxy kubectl; do
  build "$b" "k8s.io/kubernetes/cmd/$b"
done
build agnhost k8s.io/kubernetes/test/images/agnhost

start=$SECONDS
echo "building CNI plugins ${cni_bins[*]} $cni_version"
pkgs=()
for b in "${cni_bins[@]}"; do
  case $b in
  host-local) pkgs+=("github.com/containernetworking/plugins/plugins/ipam/host-local@$cni_version") ;;
  portmap) pkgs+=("github.com/containernetworking/plugins/plugins/meta/portmap@$cni_version") ;;
  *) pkgs+=("github.com/containernetworking/plugins/plugins/main/$b@$cni_version") ;;
  esac
done
CGO_ENABLED=0 GOBIN="$out_dir.tmp" go install -trimpath "${pkgs[@]}"
echo "built the CNI plugins in $((SECONDS - start))s"

echo "$stamp" >"$out_dir.tmp/.complete"
rm -rf "$out_dir"
mv "$out_dir.tmp" "$out_dir"
echo "cluster assets built in $out_dir"
