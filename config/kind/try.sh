#!/usr/bin/env bash
# make kind-try: real packets through nftpol on the kind cluster. A server
# pod (TCP 8080) on one worker, two probe pods (client, other) on the other
# worker; every probe is a TCP connect (agnhost connect, 2 s timeout) to
# each of the server's addresses, IPv4 and IPv6:
#
#   1. no policy                              client -> server  connected
#   2. default-deny-ingress                   client -> server  blocked
#   3. + allow app=client -> app=server:8080  client -> server  connected
#                                             other  -> server  blocked
#
# A new policy takes the agent a moment to program, so each cell is probed
# until it shows the expected result or PROBE_WINDOW seconds pass; the last
# result seen is printed. Exits non-zero if any cell differs from the
# expectation. The namespace is deleted at the end, whatever happens.
#
# Env: KIND_CLUSTER (default nftpol), KUBECTL, DOCKER, PROBE_WINDOW (30).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NS=nftpol-try
DIR="$ROOT/config/kind"
PROBE_WINDOW=${PROBE_WINDOW:-30}

need "$KUBECTL" "install kubectl"
need "$DOCKER" "the checks read the nodes' nftables through docker exec"

k -n nftpol-system rollout status ds/nftpol --timeout=60s >/dev/null ||
	die "nftpol is not running on every node: run make kind-deploy first"

cleanup() {
	log "deleting namespace $NS"
	k delete namespace "$NS" --ignore-not-found --wait=false >/dev/null || true
}
trap cleanup EXIT

# no_foreign_tables: nftpol must be the only enforcer, or a blocked or
# allowed result would say nothing about nftpol (a packet must pass every
# enforcer on its path). Checked now, after pods were created (pod events
# make a still-running policy engine re-sync and re-create its table).
no_foreign_tables() {
	local node found
	while read -r node; do
		found=$(foreign_policy_tables "$node") || exit 1
		[[ -z $found ]] || die "$node has a foreign NetworkPolicy table ($found): run make kind-up again"
	done < <(kind_nodes)
}

log "creating namespace $NS with pods server, client and other"
# A leftover namespace from an interrupted run may still be terminating.
k wait --for=delete "namespace/$NS" --timeout=120s >/dev/null 2>&1 || true
k apply -f "$DIR/try-pods.yaml"
k -n "$NS" wait --for=condition=Ready pod/server pod/client pod/other --timeout=180s
k -n "$NS" get pods -o wide
no_foreign_tables

mapfile -t ips < <(k -n "$NS" get pod server -o jsonpath='{range .status.podIPs[*]}{.ip}{"\n"}{end}')
[[ ${#ips[@]} -ge 1 ]] || die "pod server has no IP"
[[ ${#ips[@]} -ge 2 ]] || warn "pod server has only ${ips[*]}: the cluster is not dual stack, testing one family"
server_node=$(k -n "$NS" get pod server -o jsonpath='{.spec.nodeName}')

# probe FROM IP: one connection attempt; prints "connected", "blocked
# (TIMEOUT)" / "blocked (REFUSED)" (drop / reject deny action), or
# "error: ..." when the probe itself failed (which never counts as blocked).
probe() {
	local addr=$2 out reason
	[[ $addr == *:* ]] && addr="[$addr]"
	if out=$(k -n "$NS" exec "$1" -- /agnhost connect "$addr:8080" --timeout=2s 2>&1); then
		echo connected
		return
	fi
	reason=$(grep -m1 -oE '^(TIMEOUT|REFUSED)' <<<"$out" || true)
	if [[ -n $reason ]]; then
		echo "blocked ($reason)"
	else
		echo "error: $(tr '\n' ' ' <<<"$out")"
	fi
}

# expect FROM IP WANT: probe until the result matches WANT (connected or
# blocked) or the window closes; prints the last result, fails on mismatch.
expect() {
	local from=$1 ip=$2 want=$3 got deadline=$((SECONDS + PROBE_WINDOW))
	while :; do
		got=$(probe "$from" "$ip")
		[[ $got == "$want"* ]] && {
			echo "$got"
			return 0
		}
		((SECONDS < deadline)) || break
		sleep 1
	done
	echo "$got"
	return 1
}

# in_nftpol_table IP: the server's node lists IP in table inet nftpol, so
# the isolation seen is nftpol's own (and not something else on the path).
in_nftpol_table() {
	local listing re
	listing=$("$DOCKER" exec "$server_node" nft list table inet nftpol 2>&1) || return 1
	re="(^|[^0-9a-fA-F:.])${1//./\\.}([^0-9a-fA-F:.]|$)"
	grep -Eq -- "$re" <<<"$listing"
}

failures=0
rows=()
# row STEP FROM WANT: one line of the table, one cell per server address.
row() {
	local step=$1 from=$2 want=$3 line ip got
	line=$(printf '%-34s %-16s %-10s' "$step" "$from -> server" "$want")
	for ip in "${ips[@]}"; do
		if got=$(expect "$from" "$ip" "$want"); then
			line+=$(printf ' | %-20s' "$got")
		else
			line+=$(printf ' | %-20s' "$got  <-- WRONG")
			failures=$((failures + 1))
		fi
	done
	rows+=("$line")
	printf '%s\n' "$line" >&2
}

log "1/3 no policy"
row "no policy" client connected

log "2/3 apply default-deny-ingress"
k apply -f "$DIR/try-deny.yaml"
row "default-deny-ingress" client blocked
for ip in "${ips[@]}"; do
	if ! in_nftpol_table "$ip"; then
		printf 'ERROR: %s does not list %s in table inet nftpol\n' "$server_node" "$ip" >&2
		failures=$((failures + 1))
	fi
done

log "3/3 apply allow-client-to-server"
k apply -f "$DIR/try-allow.yaml"
row "+ allow app=client to TCP 8080" client connected
row "+ allow app=client to TCP 8080" other blocked

# Once more at the end: nothing re-created a foreign table meanwhile.
no_foreign_tables

echo
header=$(printf '%-34s %-16s %-10s' "policies in $NS" "probe" "expected")
for ip in "${ips[@]}"; do
	[[ $ip == *:* ]] && ip="[$ip]"
	header+=$(printf ' | %-20s' "$ip:8080")
done
printf '%s\n' "$header"
printf '%s\n' "${header//?/-}"
printf '%s\n' "${rows[@]}" | sed 's/ *$//'
echo
if [[ $failures -ne 0 ]]; then
	die "$failures check(s) differ from the expectation (server on $server_node; agent logs: $KUBECTL --context $KCONTEXT -n nftpol-system logs ds/nftpol)"
fi
log "all checks passed: nftpol enforced every step, for every address family"
