#!/usr/bin/env bash
# Builds the envtest control-plane binaries (kube-apiserver, etcd) from the Go
# module proxy, because setup-envtest's download site is unreachable here.
#
# usage: build-assets.sh K8S_VERSION ETCD_VERSION OUT_DIR
#
# A throwaway module requires k8s.io/kubernetes and the etcd server; every
# staging module that k8s.io/kubernetes replaces with ./staging/... is pinned
# to the matching v0.Y.Z release instead. The result lands in OUT_DIR only
# when both binaries built, so a half-built cache is never mistaken for a
# complete one.
set -euo pipefail

k8s_version=${1:?kubernetes version, e.g. v1.37.2}
etcd_version=${2:?etcd server version, e.g. v3.7.3}
out_dir=${3:?output directory}

if [[ -x "$out_dir/kube-apiserver" && -x "$out_dir/etcd" ]]; then
  echo "envtest assets present in $out_dir"
  exit 0
fi

staging_version="v0.${k8s_version#v1.}"
work=$(mktemp -d /tmp/nftpol-envtest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"

proxy=$(go env GOPROXY | cut -d, -f1)
echo "reading k8s.io/kubernetes $k8s_version go.mod for its staging modules"
gomod_url="$proxy/k8s.io/kubernetes/@v/$k8s_version.mod"
if ! curl -fsSL "$gomod_url" -o kubernetes.mod 2>/dev/null; then
  # Fall back to the go tool itself (works with any GOPROXY setting).
  go mod download -json "k8s.io/kubernetes@$k8s_version" >dl.json
  cp "$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' dl.json)" kubernetes.mod
fi

{
  echo "module nftpol.local/envtest-assets"
  echo
  echo "go 1.26"
  echo
  echo "require ("
  echo "	k8s.io/kubernetes $k8s_version"
  echo "	go.etcd.io/etcd/server/v3 $etcd_version"
  echo ")"
  echo
  echo "replace ("
  sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' kubernetes.mod |
    while read -r mod; do echo "	$mod => $mod $staging_version"; done
  echo ")"
} >go.mod

cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
GO

echo "resolving modules (first time: several minutes)"
go mod tidy >/dev/null
mkdir -p "$out_dir.tmp"
echo "building kube-apiserver $k8s_version"
CGO_ENABLED=0 go build -trimpath -o "$out_dir.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
echo "building etcd $etcd_version"
CGO_ENABLED=0 go build -trimpath -o "$out_dir.tmp/etcd" go.etcd.io/etcd/server/v3
rm -rf "$out_dir"
mv "$out_dir.tmp" "$out_dir"
echo "envtest assets built in $out_dir"
