#!/usr/bin/env bash
# make kind-deploy: load the agent image into the kind cluster and install
# config/default. The Makefile target has already run make docker-build
# IMG=$IMG. kind nodes cannot pull an image that exists only in the local
# Docker engine, hence `kind load`.
#
# Env: IMG (default nftpol:dev), KIND_CLUSTER (nftpol), KIND, KUBECTL, DOCKER.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMG=${IMG:-nftpol:dev}

need "$DOCKER" "kind runs its nodes as Docker containers"
need "$KIND" "install kind >= v0.20"
need "$KUBECTL" "install kubectl"
"$KIND" get clusters 2>/dev/null | grep -qx -- "$KIND_CLUSTER" ||
	die "no kind cluster '$KIND_CLUSTER': run make kind-up first"
"$DOCKER" image inspect "$IMG" >/dev/null 2>&1 ||
	die "no local image $IMG: build it with make docker-build IMG=$IMG"
[[ $IMG != *@* ]] || die "IMG=$IMG: use a tag, not a digest (kind load works on tagged local images)"

log "loading $IMG into every node of '$KIND_CLUSTER'"
"$KIND" load docker-image "$IMG" --name "$KIND_CLUSTER"

if [[ $IMG == nftpol:dev ]]; then
	# config/default already pins nftpol:dev.
	k apply -k "$ROOT/config/default"
else
	# Another image: a throwaway overlay on config/default, so no tracked
	# file changes. kustomize refuses an absolute path as a resource, and a
	# relative path from a temporary directory back into the repository
	# breaks on symlinked temp dirs (macOS), so the overlay gets its own
	# copy of config/ (a few small files) and refers to config/default.
	# Split IMG into name and tag; a colon in the last path element is the
	# tag (a registry's host:port comes before a slash).
	name=$IMG tag=latest
	if [[ ${IMG##*/} == *:* ]]; then
		name=${IMG%:*}
		tag=${IMG##*:}
	fi
	overlay=$(mktemp -d)
	trap 'rm -rf "$overlay"' EXIT
	cp -R "$ROOT/config" "$overlay/config"
	# imagePullPolicy IfNotPresent: for a :latest tag Kubernetes would
	# otherwise always pull, and the image exists only on the nodes.
	cat >"$overlay/kustomization.yaml" <<YAML
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - config/default
images:
  - name: nftpol
    newName: $name
    newTag: "$tag"
patches:
  - target:
      kind: DaemonSet
      name: nftpol
    patch: |-
      - op: add
        path: /spec/template/spec/containers/0/imagePullPolicy
        value: IfNotPresent
YAML
	k apply -k "$overlay"
fi

if ! k -n nftpol-system rollout status ds/nftpol --timeout=120s; then
	k -n nftpol-system get pods -o wide >&2 || true
	die "the nftpol DaemonSet did not become ready. Logs: $KUBECTL --context $KCONTEXT -n nftpol-system logs ds/nftpol"
fi
k -n nftpol-system get pods -o wide
log "nftpol runs on every node: next, make kind-try"
