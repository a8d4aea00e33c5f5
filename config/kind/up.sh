#!/usr/bin/env bash
# make kind-up: a kind cluster in which nftpol is the only NetworkPolicy
# enforcer. Creates the cluster (config/kind/cluster.yaml), turns off the
# policy engine kind ships next to kindnet, whichever form this kind version
# uses, then checks on every node that no other policy table is left.
#
# Written without a Docker engine or kind at hand, so it does not trust its
# own steps: the last step reads every node's nftables and fails if a
# foreign policy table is still there.
#
# Env: KIND_CLUSTER (default nftpol), KIND (kind), KUBECTL (kubectl),
#      DOCKER (docker), VERIFY_WAIT (seconds to wait before the final check, 20).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VERIFY_WAIT=${VERIFY_WAIT:-20}

need "$DOCKER" "kind runs its nodes as Docker containers"
need "$KIND" "install kind >= v0.20 (https://kind.sigs.k8s.io)"
need "$KUBECTL" "install kubectl"
"$DOCKER" info >/dev/null 2>&1 || die "the Docker CLI cannot reach a Docker engine ('$DOCKER info' failed)"

# --- 1. The cluster ------------------------------------------------------
# Re-running is allowed: an existing cluster of that name is kept and the
# remaining steps (all idempotent) run again on it.
if "$KIND" get clusters 2>/dev/null | grep -qx -- "$KIND_CLUSTER"; then
	log "kind cluster '$KIND_CLUSTER' exists: keeping it"
else
	log "creating kind cluster '$KIND_CLUSTER' (1 control plane, 2 workers, dual stack)"
	"$KIND" create cluster --name "$KIND_CLUSTER" --config "$ROOT/config/kind/cluster.yaml" --wait 3m
fi

k -n kube-system get ds kindnet >/dev/null 2>&1 ||
	die "no DaemonSet kube-system/kindnet: this flow expects kind's default CNI (see config/kind/cluster.yaml)"
k -n kube-system rollout status ds/kindnet --timeout=180s

# --- 2. A separate kube-network-policies DaemonSet -----------------------
# Some kind versions run the policy engine as its own DaemonSet. Foreground
# deletion with --wait returns only once its pods are gone, so the pods
# cannot re-create their table after step 4 removes it.
log "removing DaemonSet kube-system/kube-network-policies, if this kind version has one"
k -n kube-system delete ds kube-network-policies --ignore-not-found --cascade=foreground --wait=true --timeout=120s

# --- 3. The policy engine built into kindnetd -----------------------------
# Newer kindnetd binaries embed kube-network-policies behind a Go flag,
# -network-policy (default true). Older binaries have no such flag, and an
# unknown flag would make kindnetd exit, leaving the cluster without a CNI:
# so ask the binary itself (-help) before passing it anything.
cname=$(k -n kube-system get ds kindnet -o jsonpath='{.spec.template.spec.containers[0].name}')
cmd0=$(k -n kube-system get ds kindnet -o jsonpath='{.spec.template.spec.containers[0].command[0]}')
has_args=$(k -n kube-system get ds kindnet -o jsonpath='{.spec.template.spec.containers[0].args}')
bin=$cmd0
if [[ -z $bin ]]; then
	# No command in the DaemonSet: the image's entrypoint runs. Read it from
	# the image config containerd holds on a node (the first array element
	# after "Entrypoint", else after "Cmd") rather than guessing a path.
	image=$(k -n kube-system get ds kindnet -o jsonpath='{.spec.template.spec.containers[0].image}')
	node=$(kind_nodes | head -n1)
	bin=$("$DOCKER" exec "$node" crictl inspecti "$image" 2>/dev/null |
		awk '/"Entrypoint": \[/ || /"Cmd": \[/ { getline; gsub(/[ \t",]/, ""); print; exit }' || true)
fi

supports_flag=false
if [[ -n $bin ]]; then
	# Captured first, then searched: with pipefail, kubectl's exit status
	# (-help may exit non-zero) must not decide the answer.
	help=$(k -n kube-system exec ds/kindnet -c "$cname" -- "$bin" -help 2>&1 || true)
	# Match the flag itself, not -admin-network-policy and the like; both the
	# Go flag ("  -network-policy") and pflag ("--network-policy") layouts.
	if grep -Eq -- '^[[:space:]]*--?network-policy([[:space:]=]|$)' <<<"$help"; then
		supports_flag=true
	fi
else
	warn "could not find the kindnetd binary (no command in the DaemonSet, no entrypoint in its image)"
fi

if [[ $supports_flag == true ]]; then
	# The last occurrence wins for Go flags, and container args come after
	# the command, so appending =false also overrides a --network-policy=true
	# written into the command (as some kindnet manifests do).
	spec=$(k -n kube-system get ds kindnet -o jsonpath='{.spec.template.spec.containers[0].command}{.spec.template.spec.containers[0].args}')
	last=$(grep -oE -- '"--?network-policy(=[^"]*)?"' <<<"$spec" | tail -n1 || true)
	if [[ $last =~ =(false|0|f|F|FALSE|False)\"$ ]]; then
		log "kindnetd already runs with its policy engine off ($last)"
	else
		log "kindnetd ($bin) has -network-policy: restarting it with --network-policy=false"
		ops=()
		if [[ -z $cmd0 ]]; then
			# Setting args alone would replace the image's Cmd; if that Cmd is
			# the binary, the container would try to run the flag. Name the
			# binary as the command explicitly.
			ops+=("{\"op\":\"add\",\"path\":\"/spec/template/spec/containers/0/command\",\"value\":[\"$bin\"]}")
		fi
		if [[ -n $has_args ]]; then
			ops+=('{"op":"add","path":"/spec/template/spec/containers/0/args/-","value":"--network-policy=false"}')
		else
			ops+=('{"op":"add","path":"/spec/template/spec/containers/0/args","value":["--network-policy=false"]}')
		fi
		patch="[$(
			IFS=,
			echo "${ops[*]}"
		)]"
		k -n kube-system patch ds kindnet --type=json -p "$patch"
		if ! k -n kube-system rollout status ds/kindnet --timeout=180s; then
			# Without kindnet the cluster has no pod network: put it back.
			k -n kube-system rollout undo ds/kindnet || true
			die "kindnet did not become ready with --network-policy=false; rolled back. Logs: $KUBECTL --context $KCONTEXT -n kube-system logs ds/kindnet"
		fi
	fi
else
	log "kindnetd has no -network-policy flag: no policy engine inside kindnetd to turn off"
fi

# --- 4. Leftover tables ---------------------------------------------------
# An engine that was stopped or turned off may leave its table behind
# (kube-network-policies queues packets to userspace from it). nftpol never
# touches other tables, so remove them here, on every node.
mapfile -t nodes < <(kind_nodes)
[[ ${#nodes[@]} -gt 0 ]] || die "kind lists no nodes for cluster '$KIND_CLUSTER'"
for node in "${nodes[@]}"; do
	nft_available "$node" || exit 1
	for table in kube-network-policies kindnet-network-policies; do
		if out=$("$DOCKER" exec "$node" nft delete table inet "$table" 2>&1); then
			log "$node: deleted leftover table inet $table"
		elif ! grep -q 'No such file' <<<"$out"; then
			die "$node: 'nft delete table inet $table' failed: $out"
		fi
	done
done

# --- 5. Verify ------------------------------------------------------------
# A policy engine that is still running re-creates its table on its next
# sync; wait a little so that shows up here rather than as a confusing
# result in make kind-try (which checks again after creating pods).
log "waiting ${VERIFY_WAIT}s, then checking every node for foreign policy tables"
sleep "$VERIFY_WAIT"
bad=0
for node in "${nodes[@]}"; do
	if ! found=$(foreign_policy_tables "$node"); then
		bad=1
		continue
	fi
	if [[ -n $found ]]; then
		printf 'ERROR: %s still has: %s\n' "$node" "$found" >&2
		bad=1
	else
		log "$node: no foreign NetworkPolicy table"
	fi
done
if [[ $bad -ne 0 ]]; then
	die "another NetworkPolicy engine is still active, or a node could not be checked.
A packet would have to pass both it and nftpol, so kind-try would not show
nftpol alone. Look at: $KUBECTL --context $KCONTEXT -n kube-system get ds -o wide
(kindnet's command and args, any policy DaemonSet), turn it off and run
make kind-up again."
fi
log "cluster '$KIND_CLUSTER' is ready for nftpol: next, make kind-deploy"
