#!/usr/bin/env bash
# Builds the ClusterNetworkPolicy conformance suite of
# sigs.k8s.io/network-policy-api from the Go module proxy: its
# conformance/ test package, unmodified, entry point included, into
# OUT_DIR/cnp-conformance.test, and copies the module's experimental
# ClusterNetworkPolicy CRD (a superset of the standard one) to
# OUT_DIR/clusternetworkpolicies.yaml.
#
# usage: build-cnp.sh NETWORK_POLICY_API_VERSION OUT_DIR
#
# It builds inside a copy of that module, so the suite links exactly the
# versions its own go.sum pins. OUT_DIR gets a .complete stamp of the
# version only when it built, so a half-built cache is never mistaken for
# a complete one.
set -euo pipefail

npapi_version=${1:?network-policy-api version, e.g. v0.3.0}
out_dir=${2:?output directory}

stamp="network-policy-api $npapi_version cnp-conformance.test"
if [[ -f "$out_dir/.complete" && "$(cat "$out_dir/.complete")" == "$stamp" ]]; then
  echo "ClusterNetworkPolicy conformance suite present in $out_dir"
  exit 0
fi

work=$(mktemp -d /tmp/nftpol-cnp-build.XXXXXX)
trap 'rm -rf "$work"' EXIT

start=$SECONDS
echo "building the conformance suite of sigs.k8s.io/network-policy-api $npapi_version"
npapi=$(go mod download -json "sigs.k8s.io/network-policy-api@$npapi_version" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
cp -r "$npapi" "$work/npapi"
chmod -R u+w "$work/npapi"
mkdir -p "$out_dir.tmp"
(cd "$work/npapi" && CGO_ENABLED=0 go test -c -trimpath -o "$out_dir.tmp/cnp-conformance.test" ./conformance)
cp "$work/npapi/config/crd/experimental/policy.networking.k8s.io_clusternetworkpolicies.yaml" \
  "$out_dir.tmp/clusternetworkpolicies.yaml"
echo "built cnp-conformance.test in $((SECONDS - start))s"
echo "$stamp" >"$out_dir.tmp/.complete"
rm -rf "$out_dir"
mv "$out_dir.tmp" "$out_dir"
echo "ClusterNetworkPolicy conformance suite built in $out_dir"
