#!/usr/bin/env bash
# make demo: build a vWire between a client and an endpoint namespace, ping
# across it both ways, print its counters, close it and show that nothing is
# left behind. The dataplane is the kernel one (veth + eBPF cross-connect),
# or VPP when VPP_BIN is set or vpp is on PATH (NSM_DATAPLANE=kernel|vpp
# forces one). Needs root. Usage: demo.sh BIN_DIR
set -euo pipefail

BIN=$(cd "${1:-./bin}" && pwd)
[ "$(id -u)" = 0 ] || { echo "demo: needs root (network namespaces, veth, eBPF)" >&2; exit 1; }

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
need() { # command, Debian package
	command -v "$1" >/dev/null && return
	echo "demo: installing $2 (for $1)"
	apt-get install -y -qq "$2" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$2" >/dev/null; }
}
need ip iproute2
need ping iputils-ping
need bpftool bpftool

DATAPLANE=${NSM_DATAPLANE:-}
if [ -z "$DATAPLANE" ]; then
	DATAPLANE=kernel
	if [ -n "${VPP_BIN:-}" ] || command -v vpp >/dev/null; then DATAPLANE=vpp; fi
fi
case $DATAPLANE in
kernel) ;;
vpp)
	VPP_BIN=${VPP_BIN:-$(command -v vpp || true)}
	[ -x "$VPP_BIN" ] || { echo "demo: NSM_DATAPLANE=vpp needs VPP_BIN or vpp on PATH" >&2; exit 1; }
	VPPCTL=$(dirname "$VPP_BIN")/vppctl
	[ -x "$VPPCTL" ] || VPPCTL=$(command -v vppctl || true)
	;;
*) echo "demo: NSM_DATAPLANE=$DATAPLANE: want kernel or vpp" >&2; exit 1 ;;
esac

run=$$
CLIENT=nsmfwd-demo-client-$run
EP=nsmfwd-demo-endpoint-$run
NAME=nsmfwd-demo-$run
DIR=$(mktemp -d /tmp/nsmfwd-demo.XXXXXX)
FWD_SOCK=$DIR/nsmfwd.sock
NSE_SOCK=$DIR/nse.sock
pids=()

cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	# nsmfwd leaves its VPP running on purpose (a restart adopts it).
	if [ -f "$DIR/vpp/vpp.pid" ]; then
		vpid=$(cat "$DIR/vpp/vpp.pid")
		kill "$vpid" 2>/dev/null || true
		for _ in $(seq 100); do kill -0 "$vpid" 2>/dev/null || break; sleep 0.05; done
	fi
	ip netns del "$CLIENT" 2>/dev/null || true
	ip netns del "$EP" 2>/dev/null || true
	rm -rf "$DIR"
}
trap cleanup EXIT

wait_for() { for _ in $(seq 200); do [ -S "$1" ] && return; sleep 0.05; done; echo "demo: $1 did not appear" >&2; exit 1; }
nsmfwd_links() { ip -d link show | grep -c "alias nsmfwd/$NAME/" || true; }
bpf_progs() { bpftool prog show | grep -c '^[0-9]' || true; }
vppctl() { [ -n "${VPPCTL:-}" ] && "$VPPCTL" -s "$DIR/vpp/cli.sock" "$@"; }
# VPP interfaces besides local0 (0 without VPP).
vpp_ifs() {
	[ "$DATAPLANE" = vpp ] || { echo 0; return; }
	if [ -z "${VPPCTL:-}" ]; then echo 0; return; fi
	(vppctl show interface || true) | awk 'NR > 1 && $1 != "local0" && $2 ~ /^[0-9]+$/' | wc -l
}

bold "before"
progs_before=$(bpf_progs)
echo "BPF programs loaded machine-wide: $progs_before"
echo "links owned by this forwarder:    $(nsmfwd_links)"

bold "client and endpoint namespaces"
ip netns add "$CLIENT"
ip netns add "$EP"
ip -n "$CLIENT" link set lo up
ip -n "$EP" link set lo up
ip netns list | grep nsmfwd-demo

bold "endpoint (nse) in $EP, forwarder (nsmfwd, $DATAPLANE dataplane) on the node"
NSM_NAME=demo-nse NSM_LISTEN_ON=unix://$NSE_SOCK NSM_SERVICE_NAMES=icmp-responder \
	NSM_CIDR_PREFIX=169.254.0.0/24,fd00:5::/120 \
	ip netns exec "$EP" "$BIN/nse" 2>"$DIR/nse.log" &
pids+=($!)
wait_for "$NSE_SOCK"
# NSM_INSECURE: the demo has no SPIRE agent (no SPIFFE_ENDPOINT_SOCKET); see
# docs/operations.md for the secure setup.
NSM_NAME=$NAME NSM_LISTEN_ON=unix://$FWD_SOCK NSM_CONNECT_TO=unix://$NSE_SOCK \
	NSM_INSECURE=true NSM_STATE_DIR=$DIR/state NSM_DATAPLANE=$DATAPLANE \
	NSM_VPP_RUNTIME_DIR=$DIR/vpp NSM_VPP_MEMIF_DIR=$DIR/memif VPP_BIN=${VPP_BIN:-} \
	"$BIN/nsmfwd" 2>"$DIR/nsmfwd.log" &
pids+=($!)
# A local VPP takes a few seconds to start before nsmfwd serves.
for _ in $(seq 600); do [ -S "$FWD_SOCK" ] && break; kill -0 "${pids[1]}" 2>/dev/null || break; sleep 0.05; done
[ -S "$FWD_SOCK" ] || { echo "demo: nsmfwd did not start" >&2; cat "$DIR/nsmfwd.log" >&2; exit 1; }
echo "nse pid ${pids[0]}, nsmfwd pid ${pids[1]}"

export NSM_CONNECT_TO=unix://$FWD_SOCK
bold "nsmctl connect (a KERNEL interface nsm0 in $CLIENT)"
"$BIN/nsmctl" connect --service icmp-responder --netns "/run/netns/$CLIENT" --ifname nsm0 --id demo-1

c4=$(ip -n "$CLIENT" -4 -o addr show dev nsm0 | awk '{print $4}' | cut -d/ -f1)
c6=$(ip -n "$CLIENT" -6 -o addr show dev nsm0 scope global | awk '{print $4}' | cut -d/ -f1)
e4=$(ip -n "$EP" -4 -o addr show scope global | awk '{print $4}' | cut -d/ -f1)
e6=$(ip -n "$EP" -6 -o addr show scope global | awk '{print $4}' | cut -d/ -f1)
ip -n "$CLIENT" -br addr show dev nsm0
ip -n "$EP" -br addr show | grep -v '^lo'
if [ "$DATAPLANE" = vpp ]; then
	echo "node side (veth host ends attached to VPP by af_packet, cross-connected in VPP):"
	ip -o -d link show | grep "alias nsmfwd/$NAME/" | awk '{sub(/@.*/, "", $2); for (i = 1; i < NF; i++) if ($i == "alias") print "  " $2, "alias", $(i + 1)}'
	vppctl show mode | sed 's/^/  /' || true
else
	echo "node side (cross-connected by eBPF, no bridge, no routing):"
	ip -o -d link show | grep "alias nsmfwd/$NAME/" | awk '{sub(/@.*/, "", $2); for (i = 1; i < NF; i++) if ($i == "alias") print "  " $2, "alias", $(i + 1)}'
	bpftool net show | grep -E '^(tc|tcx|nf|xdp)|nf[ce][0-9a-f]+' | sed 's/^/  /' || true
fi
echo "BPF programs loaded machine-wide now: $(bpf_progs)"

bold "ping client -> endpoint"
ip netns exec "$CLIENT" ping -c 3 -i 0.2 -W 2 "$e4"
ip netns exec "$CLIENT" ping -c 3 -i 0.2 -W 2 "$e6"
bold "ping endpoint -> client"
ip netns exec "$EP" ping -c 3 -i 0.2 -W 2 "$c4"
ip netns exec "$EP" ping -c 3 -i 0.2 -W 2 "$c6"

bold "per-connection counters (read from $([ "$DATAPLANE" = vpp ] && echo "VPP's stats segment" || echo "the BPF map"))"
"$BIN/nsmctl" list

bold "nsmctl close"
"$BIN/nsmctl" close --id demo-1
sleep 0.5

bold "after"
progs_after=$(bpf_progs)
left_links=$(nsmfwd_links)
client_links=$(ip -n "$CLIENT" -o link show | grep -vc ': lo:' || true)
ep_links=$(ip -n "$EP" -o link show | grep -vc ': lo:' || true)
pins=$( (find /sys/fs/bpf/nsmfwd/"$NAME" -mindepth 1 2>/dev/null || true) | wc -l)
echo "BPF programs loaded machine-wide: $progs_after (before: $progs_before)"
echo "links owned by this forwarder:    $left_links"
echo "links in $CLIENT besides lo:  $client_links"
echo "links in $EP besides lo: $ep_links"
echo "pinned BPF objects of this forwarder: $pins"
vifs=$(vpp_ifs)
[ "$DATAPLANE" = vpp ] && echo "VPP interfaces besides local0: $vifs"
if [ "$progs_after" = "$progs_before" ] && [ "$left_links" = 0 ] && [ "$client_links" = 0 ] && [ "$ep_links" = 0 ] && [ "$pins" = 0 ] && [ "$vifs" = 0 ]; then
	echo
	if [ "$DATAPLANE" = vpp ]; then
		echo "demo OK: ping passed both ways through VPP; teardown left no VPP interface, veth or memif socket"
	else
		echo "demo OK: ping passed both ways over the eBPF cross-connect; teardown left nothing behind"
	fi
else
	echo "demo FAILED: something was left behind" >&2
	echo "--- nsmfwd log"; cat "$DIR/nsmfwd.log"
	exit 1
fi
