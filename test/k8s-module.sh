# Sourced by the scripts that build Kubernetes programs from the Go module
# proxy (test/envtest, test/cluster, test/upstream build-*.sh): one way to
# lay out the throwaway module they build in.
#
# k8s_module DIR NAME K8S_VERSION ETCD_VERSION [PACKAGE...]
#
# writes DIR/go.mod requiring k8s.io/kubernetes and the etcd server, with
# every staging module k8s.io/kubernetes replaces with ./staging/... pinned
# to its v0.Y.Z release instead, and DIR/tools.go importing kube-apiserver,
# etcd and PACKAGE..., then resolves the modules. Every script requires the
# same modules and imports kube-apiserver and etcd, so the module graph is
# the same everywhere and every package one script compiled comes out of
# the Go build cache for the next.

k8s_module() {
  local dir=${1:?directory} name=${2:?module name} k8s_version=${3:?kubernetes version} etcd_version=${4:?etcd version}
  shift 4
  local staging_version="v0.${k8s_version#v1.}"
  (
    set -euo pipefail
    cd "$dir"
    go mod download -json "k8s.io/kubernetes@$k8s_version" >dl.json
    cp "$(sed -n 's/.*"GoMod": "\(.*\)".*/\1/p' dl.json)" kubernetes.mod
    {
      echo "module $name"
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
    {
      echo "//go:build tools"
      echo
      echo "package tools"
      echo
      echo "import ("
      for pkg in go.etcd.io/etcd/server/v3 k8s.io/kubernetes/cmd/kube-apiserver "$@"; do
        echo "	_ \"$pkg\""
      done
      echo ")"
    } >tools.go
    echo "resolving modules (first time: several minutes)"
    go mod tidy >/dev/null
  )
}

# k8s_ldflags K8S_VERSION prints the -X flags that make a program report the
# version it was built from, as release builds do.
k8s_ldflags() {
  local k8s_version=${1:?kubernetes version} minor
  minor=${k8s_version#v1.}
  minor=${minor%%.*}
  echo "-X k8s.io/component-base/version.gitVersion=$k8s_version -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
}
