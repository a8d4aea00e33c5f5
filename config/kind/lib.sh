# Shared by up.sh, deploy.sh and try.sh (sourced, never run on its own).
# shellcheck shell=bash
# ROOT and the helpers are used by the scripts that source this file.
# shellcheck disable=SC2034

KIND_CLUSTER=${KIND_CLUSTER:-nftpol}
KIND=${KIND:-kind}
KUBECTL=${KUBECTL:-kubectl}
# kind's node containers are managed through the Docker CLI.
DOCKER=${DOCKER:-docker}
# The repository root, whatever the caller's working directory.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# The kubeconfig context kind writes for this cluster. Every kubectl call
# names it explicitly, so a current context pointing at some other cluster
# is never patched (up.sh deletes and edits objects in kube-system).
KCONTEXT="kind-${KIND_CLUSTER}"

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
	printf 'ERROR: %s\n' "$*" >&2
	exit 1
}

# need CMD WHY: fail early with a readable message instead of "command not found".
need() {
	command -v "$1" >/dev/null 2>&1 || die "'$1' not found in PATH: $2"
}

k() { "$KUBECTL" --context "$KCONTEXT" "$@"; }

kind_nodes() { "$KIND" get nodes --name "$KIND_CLUSTER"; }

# The kernel is the Docker host's: kind nodes are containers and share it.
nft_kernel_hint() {
	cat >&2 <<'HINT'
hint: kind nodes are containers and use the Docker host's kernel. nftpol and
      this check need nf_tables there. On the Docker host (not in a node):
        sudo modprobe -a nf_tables nft_ct nft_limit nft_reject_inet
      (nfnetlink_log too, if you run the agent with --log-denied). Most
      distribution kernels load these on first use. Docker Desktop's VM
      kernel has them. A kind node image without the `nft` binary is older
      than this flow expects: use a recent kind release and its default
      node image.
HINT
}

# nft_available NODE: the node image must have `nft` for the checks below.
nft_available() {
	if ! "$DOCKER" exec "$1" sh -c 'command -v nft' >/dev/null 2>&1; then
		printf 'ERROR: node %s has no nft binary, so its nftables cannot be checked.\n' "$1" >&2
		nft_kernel_hint
		return 1
	fi
}

# foreign_policy_tables NODE: prints the nftables tables on NODE that belong
# to another NetworkPolicy engine (kube-network-policies names its table
# "kube-network-policies", kindnetd's built-in copy "kindnet-network-policies").
# Fails if the tables cannot be listed at all.
foreign_policy_tables() {
	local out
	if ! out=$("$DOCKER" exec "$1" nft list tables 2>&1); then
		printf 'ERROR: "nft list tables" failed on node %s:\n%s\n' "$1" "$out" >&2
		nft_kernel_hint
		return 1
	fi
	grep 'network-policies' <<<"$out" || true
}
